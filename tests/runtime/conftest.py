"""Fixtures of the runtime tests: a bare swtpm and a filter host in front of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cvtpm.runtime.filter_host import FilterHost
from tests.support.sockets import wait_for_socket


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
