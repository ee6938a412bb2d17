"""Boot Debian's kernel under QEMU on the host's / (read-only) and run a script in it.

The guest is what a host with CONFIG_TCG_VTPM_PROXY looks like: the installed
`linux-image-amd64` kernel, booted with software emulation (`-accel tcg`),
the host's / shared read-only over virtio-9p under a tmpfs overlay, so that
swtpm, tpm2-tools, runc and the project's virtual environment are all there
at the same paths. A small initramfs built at test time loads the modules the
guest needs; `scripts/qemu-guest-init` does the rest (see its header).

The host and the guest talk through an "exchange" directory shared read-write:
the host writes `init` and `script`, the guest writes `booted`, `output` and
`status`. Every wait has a hard limit, and QEMU is killed when one passes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
GUEST_INIT = REPO_ROOT / "scripts" / "qemu-guest-init"
BUSYBOX = Path("/bin/busybox")

# What the guest must load from the initramfs before it can mount its root:
# the virtio PCI transport, 9p over virtio, overlayfs, and a virtio RNG so that
# getrandom() in the guest does not wait for entropy under slow emulation.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng")

# Generous limits for a noisy 2-core machine; a healthy boot takes far less.
BOOT_TIMEOUT = 180.0
RUN_TIMEOUT = 600.0
MEMORY_MB = 1024
CPUS = 2

# Where the guest mounts the exchange share (EXCHANGE in scripts/qemu-guest-init).
GUEST_EXCHANGE = "/cvtpm-qemu"
# What `timeout` exits with when it had to stop a check (124) or kill it (137).
TIMED_OUT = (124, 137)

CHECK_BEGIN = "==== cvtpm-check begin "
CHECK_END = "==== cvtpm-check end "


class GuestError(Exception):
    """The guest could not be built, did not come up, or did not finish in time."""


class GuestLockup(GuestError):
    """The guest's kernel reported a soft lockup and panicked (softlockup_panic).

    Under TCG with two vCPUs the guest now and then locks up with both CPUs
    spinning in the kernel (runc on one, runc init on the other): twice in
    about a dozen boots on the 2-core test machines, never on the host's own
    kernel. The console then has the backtraces, and the session boots the
    guest again once (conftest.guest_session).
    """


@dataclass(frozen=True)
class GuestKernel:
    """An installed kernel image and the module tree that belongs to it."""

    version: str
    image: Path
    modules: Path


@dataclass
class GuestRun:
    """What one boot produced: the script's output and status, and the console."""

    status: int
    output: str
    console: str
    boot_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class CheckResult:
    """One check's exit status and its combined stdout and stderr."""

    status: int
    output: str
    seconds: float = 0.0


@dataclass
class GuestChecks:
    """Named shell snippets run one after another in a single boot."""

    checks: dict[str, tuple[str, int]] = field(default_factory=dict)
    prologue: str = ""

    def add(self, name: str, script: str, timeout: int = 120) -> None:
        """Register a check; it runs under `sh -e` and is killed after `timeout` s."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in self.checks:
            raise ValueError(f"bad or duplicate check name {name!r}")
        self.checks[name] = (script, timeout)

    def write(self, exchange: Path) -> None:
        """Write each check and the script that runs them, framed by markers."""
        (exchange / "checks").mkdir(exist_ok=True)
        lines = ["#!/bin/sh", "exec 2>&1", self.prologue]

        for name, (body, timeout) in self.checks.items():
            (exchange / "checks" / f"{name}.sh").write_text(textwrap.dedent(body))
            lines += [
                f"echo '{CHECK_BEGIN}{name}'",
                "began=$(date +%s.%N)",
                f"timeout -k 5 {timeout} sh -e {GUEST_EXCHANGE}/checks/{name}.sh",
                f'echo "{CHECK_END}{name} status=$? began=$began ended=$(date +%s.%N)"',
            ]
        (exchange / "script").write_text("\n".join(lines) + "\n")


def parse_checks(output: str) -> dict[str, CheckResult]:
    """Split a guest's output into per-check results using the begin/end markers."""
    results: dict[str, CheckResult] = {}
    current: str | None = None
    body: list[str] = []

    for line in output.splitlines():
        if line.startswith(CHECK_BEGIN):
            current, body = line[len(CHECK_BEGIN) :].strip(), []
        elif line.startswith(CHECK_END) and current is not None:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            status = int(fields.get("status", "-1"))
            seconds = float(fields.get("ended", 0)) - float(fields.get("began", 0))
            results[current] = CheckResult(status, "\n".join(body), seconds)
            current = None
        elif current is not None:
            body.append(line)
    return results


def find_kernel() -> GuestKernel:
    """The newest /boot/vmlinuz-* whose module tree is installed under /lib/modules."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "modules.dep").is_file():
            found.append(GuestKernel(version, image, modules))
    if not found:
        raise GuestError(
            "no /boot/vmlinuz-* with a matching /lib/modules/<version>/modules.dep; "
            "install Debian's linux-image-amd64"
        )
    return max(found, key=lambda k: _version_key(k.version))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _module_name(path: str) -> str:
    # modules.dep names files; modprobe treats '-' and '_' alike in names.
    return Path(path).name.split(".ko")[0].replace("-", "_")


def module_closure(kernel: GuestKernel, names: tuple[str, ...]) -> list[str]:
    """The .ko files (relative to the module tree) for `names`, dependencies first.

    Modules built into the image (modules.builtin) need no file and are left
    out; a name that is neither built in nor in modules.dep is an error.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        by_name[_module_name(target)] = target

    builtin = {
        _module_name(line)
        for line in (kernel.modules / "modules.builtin").read_text().splitlines()
    }
    ordered: list[str] = []

    def visit(target: str) -> None:
        if target in ordered:
            return
        # modules.dep lists every transitive dependency; visiting each first
        # keeps the order valid without relying on the order of the list.
        for dep in deps.get(target, []):
            visit(dep)
        ordered.append(target)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise GuestError(f"kernel {kernel.version} has no module {name}")
    return ordered


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev=(0, 0)) -> bytes:
    # The "newc" format the kernel unpacks (Documentation/driver-api/
    # early-userspace/buffer-format.rst): a 110-byte ASCII header, the name,
    # then the data, each padded to a multiple of four bytes.
    encoded = name.encode() + b"\0"
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    head = header + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def build_initramfs(kernel: GuestKernel, dest: Path) -> Path:
    """Write an uncompressed initramfs: busybox, the init script and the modules."""
    modules = module_closure(kernel, INITRAMFS_MODULES)
    if not BUSYBOX.is_file():
        raise GuestError(f"{BUSYBOX} is missing; install busybox-static")
    dirs = ["bin", "dev", "proc", "sys", "modules"]
    out = bytearray()

    for d in dirs:
        out += _cpio_entry(d, 0o040755)
    # The kernel opens /dev/console for init's stdio before anything is mounted.
    out += _cpio_entry("dev/console", 0o020600, rdev=(5, 1))
    out += _cpio_entry("bin/busybox", 0o100755, BUSYBOX.read_bytes())
    out += _cpio_entry("init", 0o100755, GUEST_INIT.read_bytes())

    order = []
    for rel in modules:
        base = Path(rel).name
        out += _cpio_entry(
            f"modules/{base}", 0o100644, (kernel.modules / rel).read_bytes()
        )
        order.append(base)
    out += _cpio_entry("modules/order", 0o100644, ("\n".join(order) + "\n").encode())
    out += _cpio_entry("TRAILER!!!", 0)

    dest.write_bytes(bytes(out))
    return dest


def qemu_command(
    kernel: GuestKernel, initramfs: Path, exchange: Path, console: Path
) -> list[str]:
    """The QEMU command line: TCG only, serial console to a file, two 9p shares."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise GuestError("qemu-system-x86_64 not found; install qemu-system-x86")
    append = " ".join(
        [
            "console=ttyS0",
            "rdinit=/init",
            # A panic (including init dying) ends QEMU at once via -no-reboot.
            "panic=-1",
            "oops=panic",
            # A soft lockup panics at once (ending QEMU) instead of holding the
            # run until its timeout, and its backtraces reach the console.
            "softlockup_panic=1",
            "softlockup_all_cpu_backtrace=1",
            "loglevel=5",
            # Emulated mitigations only slow TCG down; the guest runs tests.
            "mitigations=off",
        ]
    )
    return [
        qemu,
        # KVM is deliberately not used: software emulation works everywhere.
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        str(CPUS),
        "-m",
        str(MEMORY_MB),
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(kernel.image),
        "-initrd",
        str(initramfs),
        "-append",
        append,
        "-fsdev",
        "local,id=hostroot,path=/,security_model=passthrough,readonly=on,"
        "multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev",
        f"local,id=exchange,path={exchange},security_model=passthrough",
        "-device",
        "virtio-9p-pci,fsdev=exchange,mount_tag=exchange",
        "-device",
        "virtio-rng-pci",
    ]


def run_guest(
    script: str | GuestChecks,
    workdir: Path,
    boot_timeout: float = BOOT_TIMEOUT,
    run_timeout: float = RUN_TIMEOUT,
) -> GuestRun:
    """Boot the guest, run `script` as root inside it, and return what it printed.

    Raises GuestError with the console's tail when the guest does not boot
    within `boot_timeout` seconds, does not finish within `run_timeout`, or
    stops without reporting a status. QEMU never outlives this call.
    """
    kernel = find_kernel()
    if "," in str(workdir.resolve()):
        # QEMU's option parser splits -fsdev and -serial values at commas.
        raise GuestError(f"the work directory {workdir} must not contain a comma")
    exchange = workdir / "exchange"
    exchange.mkdir(parents=True, exist_ok=True)
    console = workdir / "console.log"

    shutil.copyfile(GUEST_INIT, exchange / "init")
    if isinstance(script, GuestChecks):
        script.write(exchange)
    else:
        (exchange / "script").write_text(script)
    initramfs = build_initramfs(kernel, workdir / "initramfs.cpio")

    command = qemu_command(kernel, initramfs, exchange, console)
    (workdir / "qemu.cmd").write_text(" ".join(command) + "\n")
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=open(workdir / "qemu.out", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    try:
        booted = _wait(proc, exchange / "booted", start + boot_timeout)
        boot_seconds = time.monotonic() - start
        if not booted:
            raise GuestError(_failure("the guest did not come up", proc, workdir))

        finished = _wait(proc, exchange / "status", start + boot_timeout + run_timeout)
        if not finished:
            raise unfinished(proc, workdir)

        status = int((exchange / "status").read_text().strip() or "-1")
        # The guest powers off right after writing its status.
        _stop(proc, grace=30.0)
    finally:
        _stop(proc, grace=0.0)

    return GuestRun(
        status=status,
        output=(exchange / "output").read_text(errors="replace"),
        console=_read(console),
        boot_seconds=boot_seconds,
        total_seconds=time.monotonic() - start,
    )


def _wait(proc: subprocess.Popen, marker: Path, deadline: float) -> bool:
    # Polls for a file the guest writes; a QEMU that exits ends the wait early.
    while time.monotonic() < deadline:
        if marker.exists() and marker.stat().st_size > 0:
            return True
        if proc.poll() is not None:
            return marker.exists() and marker.stat().st_size > 0
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen, grace: float) -> None:
    """Wait up to `grace` seconds for QEMU to exit, then kill its process group."""
    if proc.poll() is None and grace > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is None:
        # QEMU was started in a session of its own; its pid is the group id.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def unfinished(proc: subprocess.Popen, workdir: Path) -> GuestError:
    """The error for a guest that booted but did not report a status."""
    what = "the guest script did not finish"
    if "soft lockup" in _read(workdir / "console.log"):
        return GuestLockup(_failure(f"{what}: its kernel locked up", proc, workdir))
    return GuestError(_failure(what, proc, workdir))


def _failure(what: str, proc: subprocess.Popen, workdir: Path) -> str:
    state = "still running" if proc.poll() is None else f"exited {proc.returncode}"
    tail = "\n".join(_read(workdir / "console.log").splitlines()[-40:])
    qemu_out = _read(workdir / "qemu.out").strip()
    return (
        f"{what} (QEMU {state}; files in {workdir})\n"
        f"--- QEMU said ---\n{qemu_out or '(nothing)'}\n"
        f"--- last console lines ---\n{tail or '(empty console)'}"
    )
