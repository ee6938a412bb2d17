"""What a hook asks the daemon for a container, and the daemon's copy of it.

The daemon writes each container's request into the run directory
(container.json), so that a daemon started after it takes the container back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cvtpm.errors import UsageError
from cvtpm.names import check_name


@dataclass(frozen=True)
class ContainerRequest:
    """What an OCI hook tells the daemon about a container being created."""

    name: str
    pid: int
    rootfs: str
    bundle: str = ""
    ephemeral: bool = False
    policy: str | None = None
    parent: str | None = None
    expose: str = "socket"
    # Set by the daemon, not the hook (cvtpm.pidwatch.process_identity): what
    # tells the container's process from a later one that took its pid.
    started: str = ""

    def validate(self) -> None:
        """Raise UsageError for a request that cannot be right."""
        check_name(self.name)
        if self.parent is not None:
            check_name(self.parent)
        if self.pid <= 1:
            raise UsageError(f"container pid must be a process id, not {self.pid}")
        if not os.path.isabs(self.rootfs):
            raise UsageError(f"rootfs must be an absolute path, not {self.rootfs!r}")
        if self.expose not in ("socket", "device"):
            raise UsageError(
                f"expose must be 'socket' or 'device', not {self.expose!r}"
            )

    def check_container(self) -> None:
        """Raise UsageError unless pid and rootfs describe a container on this host."""
        try:
            ns = os.stat(f"/proc/{self.pid}/ns/mnt").st_ino
        except (OSError, OverflowError, ValueError) as exc:
            raise UsageError(f"no process {self.pid} on this host") from exc
        # Marking the daemon's own mount namespace would measure the whole host
        # (and the daemon's own files); a container has a namespace of its own.
        if ns == os.stat("/proc/self/ns/mnt").st_ino:
            raise UsageError(
                f"process {self.pid} shares the host's mount namespace: "
                "it is not a container"
            )
        if not os.path.isdir(self.rootfs):
            raise UsageError(f"rootfs {self.rootfs} is not a directory on this host")


def write_record(path: Path, text: str) -> None:
    """Write a container's record whole or not at all (a full disk leaves the old)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = path.with_name(f".{path.name}.new")
    new.write_text(text)
    os.replace(new, path)
