"""Fixtures for the measurement agent: bare swtpms, busybox runc bundles, containers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cvtpm.ima.policy import DEFAULT_CONTAINER_POLICY, parse_policy
from cvtpm.tpm.client import TpmClient

APPLETS = ["sh", "cat", "echo", "true", "sleep", "ls", "rm", "test", "["]


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
        deadline = time.monotonic() + 10
        while not Path(f"{self.socket}.ctrl").exists() or not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("swtpm did not start")
            time.sleep(0.02)

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


def make_program(rootfs: Path, directory: str, salt: bytes) -> Path:
    """A busybox copy at rootfs/<directory>/true whose digest is unique by `salt`.

    Bytes appended to a static ELF do not change how it runs; busybox picks the
    applet from the name, so the copy still behaves as `true`.
    """
    target = rootfs / directory.strip("/") / "true"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path("/bin/busybox").read_bytes() + salt)
    target.chmod(0o755)
    return target


class Bundle:
    """A runc bundle around a busybox rootfs; one container at a time per id."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.rootfs = directory / "rootfs"
        (self.rootfs / "bin").mkdir(parents=True)
        for sub in ("proc", "dev", "sys", "tmp", "data"):
            (self.rootfs / sub).mkdir()
        shutil.copy("/bin/busybox", self.rootfs / "bin" / "busybox")
        for applet in APPLETS:
            (self.rootfs / "bin" / applet).symlink_to("busybox")
        subprocess.run(["runc", "spec"], cwd=directory, check=True)
        self._config = json.loads((directory / "config.json").read_text())

    def set_script(self, script: str) -> None:
        """Make the container run `sh -c script`, with no tty and no network ns."""
        config = self._config
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/bin/sh", "-c", script]
        config["root"] = {"path": str(self.rootfs), "readonly": False}
        config["linux"]["namespaces"] = [
            ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"
        ]
        (self.directory / "config.json").write_text(json.dumps(config))


class Runc:
    """Create, start and wait for containers with runc; deletes them all at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.ids: list[str] = []

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runc", "--root", str(self.root), *args], check=True, **kw
        )

    def create(self, bundle: Bundle) -> tuple[str, int]:
        """`runc create`: namespaces and rootfs ready, user process not started."""
        cid = f"cvtpm-test-{uuid.uuid4().hex[:8]}"
        self._run(
            "create", "--bundle", str(bundle.directory), cid,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.ids.append(cid)
        return cid, self.state(cid)["pid"]

    def start(self, cid: str) -> None:
        """`runc start`: the container's process execs now."""
        self._run("start", cid)

    def state(self, cid: str) -> dict:
        """`runc state` as a dict."""
        return json.loads(self._run("state", cid, capture_output=True).stdout)

    def wait(self, cid: str, timeout: float = 30) -> None:
        """Wait until the container's process has exited."""
        deadline = time.monotonic() + timeout
        while self.state(cid)["status"] != "stopped":
            if time.monotonic() > deadline:
                raise TimeoutError(f"container {cid} still running")
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Delete every container this object created."""
        for cid in self.ids:
            subprocess.run(
                ["runc", "--root", str(self.root), "delete", "-f", cid],
                capture_output=True,
            )


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


def sha256_file(path: Path) -> bytes:
    """sha256sum's digest of a file."""
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    return bytes.fromhex(out.stdout.split()[0].decode())


def pid_alive(pid: int) -> bool:
    """True if the process exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
