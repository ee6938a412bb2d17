"""Fixtures of the runtime tests: a bare swtpm and a filter host in front of it."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from cvtpm.runtime.filter_host import FilterHost


def wait_for_socket(path: Path, process: subprocess.Popen, timeout: float = 10.0):
    """Block until a unix socket at `path` accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"swtpm exited with {process.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens at {path}")


@pytest.fixture
def swtpm_socket(short_tmp: Path):
    """A started swtpm (TPM 2.0, PCR banks sha1/256/384/512); yields its data socket."""
    state = short_tmp / "swtpm"
    state.mkdir()
    data = state / "tpm.sock"
    process = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--server",
            f"type=unixio,path={data}",
            "--ctrl",
            f"type=unixio,path={data}.ctrl",
            "--flags",
            "not-need-init,startup-clear",
        ]
    )
    try:
        wait_for_socket(Path(f"{data}.ctrl"), process)
        wait_for_socket(data, process)
        yield data
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def filter_host():
    """A running FilterHost, stopped at the end of the test."""
    with FilterHost(timeout=30.0) as host:
        yield host
