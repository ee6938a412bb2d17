"""`cvtpm daemon` refuses a second daemon and a run directory too long for its
sockets, and the daemon refuses non-containers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cvtpm.errors import UsageError
from cvtpm.server.request import ContainerRequest

pytestmark = [pytest.mark.root, pytest.mark.swtpm]

CVTPM = [sys.executable, "-m", "cvtpm.cli.main"]


def test_second_daemon_on_the_same_directories_is_refused(paths):
    """A second daemon exits 1 naming the first; the first keeps its socket."""
    common = [*CVTPM, "--state-dir", str(paths.state), "--run-dir", str(paths.run)]
    first = subprocess.Popen(
        [*common, "daemon", "--no-measure", "--pool", "0"], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not (paths.run / "daemon.sock").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)

        second = subprocess.run(
            [*common, "daemon", "--no-measure", "--pool", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert second.returncode == 1
        assert f"another cvtpm daemon (pid {first.pid}) is running" in second.stderr
        assert (paths.run / "daemon.sock").exists()
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_a_run_directory_too_long_for_vtpm_sockets_is_refused(paths, short_tmp):
    """One line naming the longest run directory that fits, exit 1, before
    anything is made: not a daemon whose every vTPM then fails."""
    fits = short_tmp / "r".ljust(51 - len(str(short_tmp)) - 1, "r")
    too_long = fits.with_name(fits.name + "r")
    common = [*CVTPM, "--state-dir", str(paths.state)]

    refused = subprocess.run(
        [*common, "--run-dir", str(too_long), "daemon", "--no-measure"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert refused.returncode == 1
    assert refused.stderr == (
        f"cvtpm: error: --run-dir {too_long} is 52 bytes long; the sockets of "
        "vTPMs below it (vtpm/UUID/tpm.sock.ctrl) need it to be at most 51 (a "
        "unix socket path holds 107)\n"
    )
    assert not too_long.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pid": os.getpid(), "rootfs": "/"}, "shares the host's mount namespace"),
        ({"pid": 2**31 - 2, "rootfs": "/"}, "no process"),
    ],
)
def test_non_containers_are_refused(fields, message):
    """A host process or a missing pid is not a container to measure."""
    request = ContainerRequest(name="x", **fields)

    with pytest.raises(UsageError, match=message):
        request.check_container()


def test_a_listen_port_in_use_is_one_line_and_no_restarts(paths):
    """`--listen` on a taken port: exit 1 at once, not a keeper restarting forever."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*CVTPM, "--state-dir", str(paths.state), "--run-dir", str(paths.run),
             "daemon", "--pool", "0", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
