"""Helpers of the container tests: a busybox rootfs, tpm2-tools binds, a daemon."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cvtpm.config import Paths

CVTPM = str(Path(sys.executable).with_name("cvtpm"))
ZERO = "00" * 32


def cvtpm(
    paths: Paths, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the cvtpm command on the test's state and run directories."""
    return subprocess.run(
        [CVTPM, "--state-dir", str(paths.state), "--run-dir", str(paths.run), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def running_daemon(paths: Paths, log_file: Path, pool: int = 2):
    """`cvtpm daemon` on `paths`, until the block ends.

    The daemon leaves its pool of ready vTPMs running when it stops, as it should
    on a host; a test's pool is stopped here, by pid, with the daemon.
    """
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [
                CVTPM,
                "-v",
                "--state-dir",
                str(paths.state),
                "--run-dir",
                str(paths.run),
                "daemon",
                "--pool",
                str(pool),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        socket = paths.run / "daemon.sock"
        deadline = time.monotonic() + 60
        while not (socket.is_socket() and "listening" in log_file.read_text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"cvtpm daemon did not start:\n{log_file.read_text()}"
                )
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)
        for pid in swtpm_processes(paths):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def replay_sha256(log_text: str) -> str:
    """PCR 10 of the sha256 bank after extending every template digest of a list."""
    pcr = bytes(32)
    for line in log_text.splitlines():
        pcr = hashlib.sha256(pcr + bytes.fromhex(line.split()[1])).digest()
    return pcr.hex().upper()


def pcr_value(pcrread_output: str, pcr: int = 10) -> str:
    """The hex value tpm2_pcrread printed for `pcr`."""
    for line in pcrread_output.splitlines():
        index, _, value = line.strip().partition(":")
        if index == str(pcr):
            return value.strip().removeprefix("0x")
    raise AssertionError(f"no PCR {pcr} in {pcrread_output!r}")


def swtpm_processes(paths: Paths) -> dict[int, str]:
    """pid -> command line of every swtpm of the tree `paths`: its arguments
    name a vTPM's state directory, or (a vTPM made since it started) the
    link to it in the run directory."""
    tops = [str(paths.state).encode(), str(paths.run).encode()]
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            line = b" ".join(argv)
            if Path(argv[0].decode()).name == "swtpm" and any(
                top in line for top in tops
            ):
                found[int(proc.name)] = line.decode()
    return found


def leftovers(paths: Paths) -> dict[str, list[str]]:
    """What is left of containers that have stopped: every item must be empty.

    The daemon's pool of ready vTPMs keeps running by design; its swtpm processes
    and sockets are not container leftovers.
    """
    from cvtpm.vtpm.manager import VtpmManager

    manager = VtpmManager(paths)
    pooled = {info.uuid for info in manager.pooled()}
    processes = [
        cmdline
        for cmdline in swtpm_processes(paths).values()
        if not any(uuid in cmdline for uuid in pooled)
    ]
    sockets = [
        str(p)
        for p in paths.run.rglob("*")
        if p.is_socket() and p.name != "daemon.sock" and p.parent.name not in pooled
    ]
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(paths.run) in line or str(paths.state) in line
    ]
    running = [info.name for info in manager.list() if manager.is_running(info.name)]
    return {
        "swtpm": processes,
        "sockets": sockets,
        "mounts": mounts,
        "running": running,
    }
