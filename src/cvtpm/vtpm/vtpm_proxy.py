"""Expose a vTPM as kernel TPM devices (/dev/tpmN, /dev/tpmrmN) through vtpm-proxy.

On kernels with CONFIG_TCG_VTPM_PROXY, `swtpm chardev --vtpm-proxy` opens
/dev/vtpmx, asks the kernel for a new TPM chip (VTPM_PROXY_IOC_NEW_DEV,
include/uapi/linux/vtpm_proxy.h) and serves it; the chip then appears as
/dev/tpmN and, with the kernel's resource manager, /dev/tpmrmN. swtpm prints
the chip's number on stdout; the device numbers come from sysfs.

The kernel registers the chip from a work queue once swtpm answers
(drivers/char/tpm/tpm_vtpm_proxy.c, vtpm_proxy_work), so the devices appear a
little after swtpm has returned: `start` waits for them.

Here swtpm serves the chip itself, so nothing filters the commands sent to the
devices: whoever opens them can extend any PCR. That suits host-side use of a
vTPM as a kernel device; a container's devices come from the daemon's own chip
instead (cvtpm.runtime.tpm_device), which relays every command through the
same filter as the TPM socket.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cvtpm.errors import ConfigError, ParseError, StateError
from cvtpm.vtpm.keys import key_pipe
from cvtpm.vtpm.swtpm import SwtpmPaths, kill, swtpm_binary

VTPMX = Path("/dev/vtpmx")
SYSFS_CLASS = Path("/sys/class")
DEV = Path("/dev")
DEVICE_TIMEOUT = 30.0

# swtpm src/swtpm/swtpm_chardev.c prints this once the kernel made the chip.
_NEW_DEVICE = re.compile(
    r"New TPM device: /dev/tpm(?P<num>\d+) "
    r"\(major/minor = (?P<major>\d+)/(?P<minor>\d+)\)"
)


@dataclass(frozen=True)
class ProxyDevice:
    """The kernel TPM chip one swtpm serves: its number, device nodes and numbers."""

    number: int
    tpm: Path
    tpmrm: Path
    tpm_devnum: tuple[int, int]
    tpmrm_devnum: tuple[int, int]
    pid: int | None = None

    @property
    def tcti(self) -> str:
        """The TCTI for the resource-managed device, as tpm2-tools and pytss take it."""
        return f"device:{self.tpmrm}"


def available(vtpmx: Path = VTPMX) -> bool:
    """True if this kernel offers vtpm-proxy (the tpm_vtpm_proxy module is loaded)."""
    return vtpmx.exists()


def require_vtpmx(vtpmx: Path = VTPMX) -> None:
    """Raise ConfigError unless /dev/vtpmx exists."""
    if not available(vtpmx):
        raise ConfigError(
            f"{vtpmx} does not exist: this kernel has no vtpm-proxy; load it with "
            "`modprobe tpm_vtpm_proxy` (CONFIG_TCG_VTPM_PROXY) or expose vTPMs "
            "as sockets"
        )


def swtpm_command(
    paths: SwtpmPaths, key_fd: int, *, resume: bool = False, swtpm: str | None = None
) -> list[str]:
    """The swtpm command line that serves `paths`' state through a new vtpm-proxy chip.

    swtpm sends TPM2_Startup itself before the kernel probes the chip: STATE to
    resume after an orderly stop (`resume`), CLEAR otherwise. It daemonizes
    once the chip exists, after printing the chip's number on stdout.
    """
    return [
        swtpm or swtpm_binary(),
        "chardev",
        "--vtpm-proxy",
        "--tpm2",
        "--tpmstate", f"dir={paths.state_dir},mode=0600",
        # The control channel stays on the host, as for a socket vTPM.
        "--ctrl", f"type=unixio,path={paths.ctrl_socket},mode=0600",
        "--key", f"fd={key_fd},mode=aes-256-cbc,format=binary",
        "--flags", "startup-state" if resume else "startup-clear",
        "--pid", f"file={paths.pid_file}",
        "--log", f"file={paths.log_file},level=1,truncate",
        "--daemon",
    ]  # fmt: skip


def parse_new_device(text: str) -> tuple[int, tuple[int, int]]:
    """The chip number and the (major, minor) of /dev/tpmN from swtpm's stdout."""
    match = _NEW_DEVICE.search(text)
    if match is None:
        raise ParseError(
            f"swtpm did not report a new TPM device: {text.strip()[:200]!r}"
        )
    return int(match["num"]), (int(match["major"]), int(match["minor"]))


def read_devnum(path: Path) -> tuple[int, int]:
    """A sysfs `dev` file ("MAJOR:MINOR\\n") as a (major, minor) pair."""
    text = path.read_text()
    major, sep, minor = text.strip().partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        raise ParseError(f"{path}: not MAJOR:MINOR: {text!r}")
    return int(major), int(minor)


def wait_for_device(
    number: int,
    timeout: float = DEVICE_TIMEOUT,
    *,
    sysfs: Path = SYSFS_CLASS,
    dev: Path = DEV,
    pid: int | None = None,
) -> ProxyDevice:
    """Wait until chip `number` is registered and its /dev nodes exist.

    Both the raw device and the resource manager must be there: a chip whose
    probe failed (swtpm gone, TPM not started) never gets them.
    """
    tpm_dev = sysfs / "tpm" / f"tpm{number}" / "dev"
    tpmrm_dev = sysfs / "tpmrm" / f"tpmrm{number}" / "dev"
    tpm_node = dev / f"tpm{number}"
    tpmrm_node = dev / f"tpmrm{number}"
    deadline = time.monotonic() + timeout

    while not all(p.exists() for p in (tpm_dev, tpmrm_dev, tpm_node, tpmrm_node)):
        if time.monotonic() > deadline:
            raise StateError(
                f"the kernel did not create {tpm_node} and {tpmrm_node} within "
                f"{timeout:.0f} s; see dmesg and the swtpm log"
            )
        time.sleep(0.01)

    return ProxyDevice(
        number=number,
        tpm=tpm_node,
        tpmrm=tpmrm_node,
        tpm_devnum=read_devnum(tpm_dev),
        tpmrm_devnum=read_devnum(tpmrm_dev),
        pid=pid,
    )


def start(
    paths: SwtpmPaths,
    state_key: bytes,
    *,
    resume: bool = False,
    timeout: float = DEVICE_TIMEOUT,
) -> ProxyDevice:
    """Start swtpm for `paths` as a vtpm-proxy chip and return it once usable.

    Stop it with `cvtpm.vtpm.swtpm.stop(paths, device.pid)`: the control
    channel works as for a socket vTPM, and the kernel removes the devices
    when swtpm exits.
    """
    require_vtpmx()
    paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in (paths.ctrl_socket, paths.pid_file):
        stale.unlink(missing_ok=True)

    key_fd = key_pipe(state_key)
    try:
        # The daemonized swtpm closes its stdout, so capturing it cannot hang.
        result = subprocess.run(
            swtpm_command(paths, key_fd, resume=resume),
            pass_fds=(key_fd,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        os.close(key_fd)

    if result.returncode != 0:
        detail = (result.stderr + _read(paths.log_file)).strip()[-500:]
        raise StateError(f"swtpm failed to create a vtpm-proxy device: {detail}")
    pid = int(paths.pid_file.read_text().strip())
    try:
        number, _ = parse_new_device(result.stdout)
        return wait_for_device(number, timeout, pid=pid)
    except Exception:
        # A chip that never became usable must not leave its swtpm behind.
        kill(pid)
        raise


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
