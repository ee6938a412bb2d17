"""What a hook asks the daemon for a container, and the daemon's copy of it.

The daemon writes each container's request into the run directory
(container.json), so that a daemon started after it takes the container back.
"""

from __future__ import annotations

import json
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


def read_record(path: Path) -> tuple[str, ContainerRequest]:
    """A container's record as written by `write_record`: its text and the
    request; OSError, or ValueError for one that is not a record."""
    text, fields = _load(path)
    pid, started = _process(fields)
    try:
        request = ContainerRequest(**{**fields, "pid": pid, "started": started})
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
    return text, request


def recorded_process(path: Path) -> tuple[int, str]:
    """Only the pid and start time from a container's record, for whoever must
    know whether the container runs even if the rest of its record is damaged;
    OSError, or ValueError if they are not there."""
    return _process(_load(path)[1])


def _load(path: Path) -> tuple[str, dict]:
    text = path.read_text()
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    return text, fields


def _process(fields: dict) -> tuple[int, str]:
    """The record's pid and start time. One written before start times were
    kept, or with null there, has "": its pid alone then says whether the
    container runs."""
    pid, started = fields.get("pid"), fields.get("started")
    if started is None:
        started = ""
    if type(pid) is not int or not isinstance(started, str):
        raise ValueError("its pid is not a number or its start not a string")
    return pid, started
