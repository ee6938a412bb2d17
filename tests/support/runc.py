"""Busybox runc bundles and containers for tests and benchmarks that run real ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

APPLETS = ["sh", "cat", "echo", "true", "sleep", "ls", "rm", "test", "["]


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

    def add_mount(self, destination: str, source: str) -> None:
        """Bind-mount host path `source` at `destination`, read-only."""
        self._config["mounts"].append(
            {
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["rbind", "ro"],
            }
        )
        (self.directory / "config.json").write_text(json.dumps(self._config))

    def join_pid_namespace(self, pid: int) -> None:
        """Make the container's processes share the pid namespace of `pid`."""
        for ns in self._config["linux"]["namespaces"]:
            if ns["type"] == "pid":
                ns["path"] = f"/proc/{pid}/ns/pid"
        (self.directory / "config.json").write_text(json.dumps(self._config))


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
