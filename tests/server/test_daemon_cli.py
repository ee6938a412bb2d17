"""`cvtpm daemon` refuses a second daemon, and the daemon refuses non-containers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cvtpm.errors import UsageError
from cvtpm.server.host import ContainerRequest

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
