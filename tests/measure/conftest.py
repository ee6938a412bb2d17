"""Fixtures for the measurement agent: bare swtpms, busybox runc bundles, containers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.support.runc import Bundle, Runc
from tests.support.sockets import wait_for_socket

from cvtpm.ima.policy import DEFAULT_CONTAINER_POLICY, parse_policy
from cvtpm.tpm.client import TpmClient


class Swtpm:
    """A bare swtpm on a unix socket; restartable with its state kept."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "tpm.sock"
        self.tcti = f"swtpm:path={self.socket}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start swtpm and wait until its socket accepts commands."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in (self.socket, Path(f"{self.socket}.ctrl")):
            leftover.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                "swtpm", "socket", "--tpm2",
                "--tpmstate", f"dir={self.directory}",
                "--server", f"type=unixio,path={self.socket}",
                "--ctrl", f"type=unixio,path={self.socket}.ctrl",
                "--flags", "not-need-init,startup-clear",
            ],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_socket(Path(f"{self.socket}.ctrl"), self.proc)
        wait_for_socket(self.socket, self.proc)

    def stop(self) -> None:
        """Stop swtpm (its PCRs reset to zero on the next start)."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> TpmClient:
        """A new connection to this swtpm."""
        return TpmClient(self.tcti)

    def pcrs(self, bank: str = "sha256") -> list[bytes]:
        """PCRs 0-23 of one bank, read with tpm2_pcrread (not with our client)."""
        out = self.directory / f"pcrs-{bank}.bin"
        selection = f"{bank}:" + ",".join(str(i) for i in range(24))
        subprocess.run(
            ["tpm2_pcrread", "-T", self.tcti, selection, "-o", str(out)],
            check=True,
            capture_output=True,
        )
        data = out.read_bytes()
        size = len(data) // 24
        return [data[i * size : (i + 1) * size] for i in range(24)]

    def pcr10(self, bank: str = "sha256") -> bytes:
        """PCR 10 of one bank, read with tpm2_pcrread."""
        return self.pcrs(bank)[10]


@pytest.fixture
def swtpm_factory(tmp_path):
    """Start swtpms on demand; all are stopped after the test."""
    started: list[Swtpm] = []

    def make(name: str = "vtpm") -> Swtpm:
        tpm = Swtpm(tmp_path / f"swtpm-{name}")
        tpm.start()
        started.append(tpm)
        return tpm

    yield make
    for tpm in started:
        tpm.stop()


@pytest.fixture
def policy():
    """cvtpm's default container policy."""
    return parse_policy(DEFAULT_CONTAINER_POLICY)


@pytest.fixture
def bundle_factory(tmp_path):
    """Make busybox runc bundles in the test's directory."""
    count = 0

    def make() -> Bundle:
        nonlocal count
        count += 1
        return Bundle(tmp_path / f"bundle{count}")

    return make


@pytest.fixture
def runc(tmp_path):
    """A runc with its own state root; its containers are deleted afterwards."""
    r = Runc(tmp_path / "runc-root")
    yield r
    r.cleanup()
