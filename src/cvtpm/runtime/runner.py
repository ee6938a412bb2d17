"""`cvtpm run`: run a command in a rootfs under runc, with its own vTPM.

The bundle lives in a temporary directory for the container's lifetime only; the
container's exit status becomes the command's, stdio is passed straight through,
and SIGINT/SIGTERM go to runc, which forwards them to the container.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cvtpm.config import Paths
from cvtpm.errors import ConfigError, CvtpmError, StateError
from cvtpm.runtime.bundle import RunSpec, oci_config, write_bundle
from cvtpm.runtime.daemon_client import DaemonClient, daemon_socket

log = logging.getLogger(__name__)

# runc keeps container state here unless told otherwise; ours stays apart from the
# host's other runc containers.
RUNC_ROOT = "runc"


def runc_binary() -> str:
    """The runc executable; raises ConfigError if it is not installed."""
    found = shutil.which("runc")
    if found is None:
        raise ConfigError("runc is not installed (Debian package `runc`)")
    return found


def run(spec: RunSpec, paths: Paths) -> int:
    """Run `spec` to completion; returns the container's exit status."""
    # 1. Fail early with a clear message rather than from inside a runc hook.
    if not daemon_socket(paths).is_socket():
        raise ConfigError(
            f"the cvtpm daemon is not listening at {daemon_socket(paths)}; "
            "start it with `cvtpm daemon`"
        )
    if not spec.rootfs.is_dir():
        raise ConfigError(f"the rootfs {spec.rootfs} is not a directory")
    runc = runc_binary()
    runc_root = paths.run / RUNC_ROOT

    # 2. The name is this run's alone: the clean-up below deletes whatever
    # container has it, so one that exists already must not be touched.
    with _name_lock(paths, spec.name):
        _refuse_taken_name(runc, runc_root, paths, spec.name)

        # 3. The bundle, then runc in the foreground with our stdio.
        bundle = Path(tempfile.mkdtemp(prefix="bundle-", dir=paths.run))
        try:
            write_bundle(bundle, oci_config(spec, paths))
            command = [runc, "--root", str(runc_root), "run", "--bundle", str(bundle)]
            return _run_forwarding_signals([*command, spec.name])

        # 4. Whatever happened, no container state or bundle is left behind,
        # and the daemon's teardown (which it starts when the container's
        # process exits) is over before this returns.
        finally:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [runc, "--root", str(runc_root), "delete", "--force", spec.name],
                    capture_output=True,
                    timeout=60,
                )
            shutil.rmtree(bundle, ignore_errors=True)
            _wait_for_teardown(paths, spec.name)


@contextlib.contextmanager
def _name_lock(paths: Paths, name: str) -> Iterator[None]:
    """Hold the lock of `name` for one `cvtpm run`; StateError if another holds it."""
    locks = paths.run / "runs"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"another `cvtpm run --name {name}` is running; pick another --name"
            ) from None
        yield
    finally:
        os.close(fd)


def _refuse_taken_name(runc: str, runc_root: Path, paths: Paths, name: str) -> None:
    """StateError if runc or the daemon already has a container called `name`."""
    state = subprocess.run(
        [runc, "--root", str(runc_root), "state", name],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if state.returncode == 0:
        raise StateError(
            f"a container named {name!r} exists already (runc --root {runc_root}"
            f" state {name}); stop and delete it first, or pick another --name"
        )
    with DaemonClient.for_paths(paths) as client:
        if name in [c.get("name") for c in client.list_containers()]:
            raise StateError(
                f"the cvtpm daemon serves a container named {name!r} already;"
                " pick another --name"
            )


def _wait_for_teardown(paths: Paths, name: str) -> None:
    """Ask the daemon to tear `name` down, or wait while it is already doing so."""
    try:
        with DaemonClient.for_paths(paths) as client:
            client.delete_container(name)
    except CvtpmError as exc:
        log.warning("the daemon did not confirm the teardown of %s: %s", name, exc)


def _run_forwarding_signals(command: list[str]) -> int:
    process = subprocess.Popen(command)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    previous = {
        signum: signal.signal(signum, forward)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        status = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    # runc returns the container's status; a container killed by a signal is
    # reported by shells as 128 + signal number, and so is it here. An
    # interrupted run is not a success, even if the container exited 0 on it.
    if status < 0:
        return 128 - status
    if status == 0 and received:
        return 128 + received[0]
    return status
