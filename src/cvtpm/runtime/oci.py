"""The OCI state a hook receives, and what a container's annotations ask of cvtpm.

A runtime hands each hook the container's state as JSON on stdin (OCI runtime
spec, "State" and "POSIX-platform Hooks"): its id, the pid of its init process,
the bundle directory and the annotations of its config.json. A container asks for
a vTPM with the annotation `io.cvtpm.vtpm=enabled`; the others refine the request.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtpm.errors import ConfigError, ParseError
from cvtpm.files import read_regular_file
from cvtpm.runtime.annotations import (
    ANNOTATION_ENABLE,
    ANNOTATION_EPHEMERAL,
    ANNOTATION_EXPOSE,
    ANNOTATION_NAME,
    ANNOTATION_PARENT,
    ANNOTATION_POLICY,
    ENABLED,
    asks_for_vtpm,
)

__all__ = [
    "ANNOTATION_ENABLE",
    "ANNOTATION_EPHEMERAL",
    "ANNOTATION_EXPOSE",
    "ANNOTATION_NAME",
    "ANNOTATION_PARENT",
    "ANNOTATION_POLICY",
    "ENABLED",
    "OciState",
    "VtpmRequest",
    "annotations_of",
    "asks_for_vtpm",
    "container_name",
    "parse_state",
    "read_config",
    "request_from",
    "rootfs_path",
]

# The daemon's rule for container and vTPM names; they become file names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
EXPOSE_CHOICES = ("auto", "socket", "device")

# The largest IMA policy a hook will read; real ones are a few kilobytes.
MAX_POLICY_SIZE = 1 << 20
# A bundle's config.json larger than this is refused (hook_main has the same).
MAX_CONFIG_SIZE = 16 << 20


@dataclass(frozen=True)
class OciState:
    """The container state of the OCI runtime spec, as given to a hook."""

    id: str
    status: str
    pid: int | None
    bundle: Path
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VtpmRequest:
    """What a container asked of cvtpm through its annotations."""

    name: str
    ephemeral: bool = False
    policy: str | None = None
    parent: str | None = None
    expose: str = "auto"

    def to_json(self, *, pid: int, bundle: Path, rootfs: Path, expose: str) -> dict:
        """The body of the daemon's POST /v1/containers for this request."""
        return {
            "name": self.name,
            "pid": pid,
            "bundle": str(bundle),
            "rootfs": str(rootfs),
            "ephemeral": self.ephemeral,
            "policy": self.policy,
            "parent": self.parent,
            "expose": expose,
        }


def parse_state(text: str) -> OciState:
    """Parse the state JSON on a hook's stdin; raises ParseError naming the field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"OCI state is not JSON: {exc.msg}", offset=exc.pos) from exc
    except RecursionError:
        raise ParseError("OCI state is nested too deeply") from None
    if not isinstance(data, dict):
        raise ParseError("OCI state is not a JSON object")

    container_id = _string_field(data, "id")
    bundle = _string_field(data, "bundle")
    # The OCI runtime spec (runtime.md, State): "the absolute path to the
    # container's bundle directory".
    if not os.path.isabs(bundle):
        raise ParseError(f"OCI state: bundle {bundle!r} is not an absolute path")
    pid = data.get("pid")
    if pid is not None and (type(pid) is not int or pid <= 0):
        raise ParseError(f"OCI state: pid is not a positive integer: {pid!r}")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ParseError("OCI state: annotations is not an object")

    return OciState(
        id=container_id,
        status=str(data.get("status", "")),
        pid=pid,
        bundle=Path(bundle),
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def read_config(bundle: Path) -> dict[str, Any]:
    """The bundle's config.json; raises ConfigError if it is missing or unreadable."""
    path = bundle / "config.json"
    raw = read_regular_file(path, "the OCI config", MAX_CONFIG_SIZE)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ConfigError(f"cannot read the OCI config {path}: {reason}") from None


def rootfs_path(bundle: Path, config: dict[str, Any]) -> Path:
    """The container's root filesystem on the host (root.path, relative to bundle)."""
    root = (config.get("root") or {}).get("path")
    if not root:
        raise ConfigError(f"{bundle / 'config.json'} has no root.path")
    return (bundle / root).resolve() if not Path(root).is_absolute() else Path(root)


def annotations_of(state: OciState, config: dict[str, Any] | None) -> dict[str, str]:
    """The container's annotations: the state's, else those in config.json."""
    if state.annotations:
        return state.annotations
    return {
        str(k): str(v) for k, v in ((config or {}).get("annotations") or {}).items()
    }


def request_from(annotations: dict[str, str], container_id: str) -> VtpmRequest | None:
    """The vTPM request the annotations make, or None if the container asked none."""
    if not asks_for_vtpm(annotations):
        return None

    expose = annotations.get(ANNOTATION_EXPOSE, "auto").strip().lower()
    if expose not in EXPOSE_CHOICES:
        raise ConfigError(
            f"annotation {ANNOTATION_EXPOSE}={expose!r}: expected one of "
            + ", ".join(EXPOSE_CHOICES)
        )

    policy = None
    if path := annotations.get(ANNOTATION_POLICY):
        policy = _read_policy(Path(path))

    return VtpmRequest(
        name=container_name(annotations, container_id),
        ephemeral=annotations.get(ANNOTATION_EPHEMERAL, "").lower() in ("true", "1"),
        policy=policy,
        parent=annotations.get(ANNOTATION_PARENT) or None,
        expose=expose,
    )


def container_name(annotations: dict[str, str], container_id: str) -> str:
    """The vTPM's name: io.cvtpm.name, else the container id; ConfigError if unfit."""
    name = annotations.get(ANNOTATION_NAME) or container_id
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"container name {name!r} is not usable for a vTPM: letters, digits, "
            "'_', '.', '-', at most 128, starting with a letter or digit"
        )
    return name


def _read_policy(path: Path) -> str:
    """The text of the IMA policy file an annotation names; ConfigError if unfit."""
    if not path.is_absolute():
        raise ConfigError(f"annotation {ANNOTATION_POLICY} must be an absolute path")
    data = read_regular_file(path, "the IMA policy", MAX_POLICY_SIZE)
    if not data.strip():
        raise ConfigError(f"the IMA policy {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the IMA policy {path} is not UTF-8 text (byte {exc.start})"
        ) from None


def _string_field(data: dict, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ParseError(f"OCI state: {name} is missing or not a non-empty string")
    return value
