"""What happens at each OCI hook stage of a container that asked for a vTPM.

The daemon runs this when `cvtpm-hook` hands it a container's state
(cvtpm.runtime.hook_main). createRuntime: make or restore the container's
vTPM, start measuring the container and start its TPM filter (all through
`containers`, the daemon's Host), then expose that TPM inside the container.
poststop: the container is gone; its vTPM is shut down in order, or
everything of an ephemeral one is deleted. The daemon also does this by
itself when a container's process exits (cvtpm.server.host), so a poststop
hook is optional and a second teardown is harmless.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cvtpm.config import Paths
from cvtpm.errors import ConfigError, CvtpmError, StateError
from cvtpm.runtime import expose as exposure
from cvtpm.runtime.oci import (
    OciState,
    annotations_of,
    asks_for_vtpm,
    container_name,
    read_config,
    request_from,
    rootfs_path,
)

log = logging.getLogger(__name__)

STAGES = ("createRuntime", "poststop")


class Containers(Protocol):
    """What a stage asks of the daemon: set a container up, or tear it down."""

    def create_container(self, body: dict[str, Any]) -> dict[str, Any]:
        """Make or restore the vTPM, start measuring and filtering; its answer."""

    def delete_container(self, name: str) -> bool:
        """Tear the container down; False if it was not set up."""


@dataclass(frozen=True)
class HookOutcome:
    """What one hook run did: `skipped`, `created`, `deleted` or `absent`."""

    action: str
    name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The outcome as JSON-ready data."""
        return {"action": self.action, "name": self.name, **self.details}


def run_stage(
    stage: str, state: OciState, paths: Paths, containers: Containers
) -> HookOutcome:
    """Run the hook for `stage` (an OCI stage name) on a container's state."""
    if stage == "createRuntime":
        return create_runtime(state, paths, containers)
    if stage == "poststop":
        return poststop(state, paths, containers)
    raise ValueError(f"unsupported hook stage {stage!r}; expected one of {STAGES}")


def create_runtime(
    state: OciState, paths: Paths, containers: Containers
) -> HookOutcome:
    """Give the container its vTPM and expose it; undo everything on failure."""
    # 1. What the container asked for.
    config = read_config(state.bundle)
    request = request_from(annotations_of(state, config), state.id)
    if request is None:
        return HookOutcome("skipped")
    if state.pid is None:
        raise ConfigError("the OCI state has no pid; is this a createRuntime hook?")
    rootfs = rootfs_path(state.bundle, config)
    refuse_exposed_state(config, state.bundle, rootfs, paths)
    expose = exposure.resolve_expose(request.expose)

    # 2. The vTPM made or restored, measurement and filtering started.
    body = request.to_json(
        pid=state.pid, bundle=state.bundle, rootfs=rootfs, expose=expose
    )
    response = containers.create_container(body)

    # 3. The TPM inside the container; a container that asked for a vTPM must
    # not start without one, so a failure here undoes step 2.
    try:
        where, created = _expose(expose, state.pid, rootfs, response)
    except (CvtpmError, OSError) as exc:
        log.error("exposing the vTPM of %s failed: %s", request.name, exc)
        containers.delete_container(request.name)
        raise

    # 4. What poststop must undo in the rootfs.
    _write_record(paths, request.name, {"rootfs": str(rootfs), "created": created})
    log.info("container %s has its vTPM (%s)", request.name, expose)
    return HookOutcome("created", request.name, {"expose": expose, "at": where})


def poststop(state: OciState, paths: Paths, containers: Containers) -> HookOutcome:
    """Tell the daemon the container stopped; a second call is harmless."""
    # The bundle may already be gone when a runtime cleans up; the state's
    # annotations are enough to find the name.
    try:
        config = read_config(state.bundle)
    except ConfigError:
        config = None
    annotations = annotations_of(state, config)
    if not asks_for_vtpm(annotations):
        return HookOutcome("skipped")
    name = container_name(annotations, state.id)
    # The daemon also removes what createRuntime made in the rootfs.
    deleted = containers.delete_container(name)
    return HookOutcome("deleted" if deleted else "absent", name)


def release_rootfs(paths: Paths, name: str) -> None:
    """Remove what createRuntime made in a gone container's rootfs (once)."""
    record = _pop_record(paths, name)
    if record is not None:
        exposure.remove_created(Path(record["rootfs"]), record["created"])


def refuse_exposed_state(
    config: dict[str, Any], bundle: Path, rootfs: Path, paths: Paths
) -> None:
    """ConfigError if the container would see cvtpm's own state or run directory.

    The state directory holds the master key every vTPM's state is encrypted
    with and the CA's keys; the run directory, every vTPM's unfiltered
    sockets. A rootfs or bind mount that holds either, lies inside either, or
    is a hard link to one of the keys gives them away. Files are compared by
    device and inode, so another name for them (a bind mount elsewhere, a
    hard link) is caught as well as the path itself.
    """
    exposed = [("the rootfs", rootfs)]
    for mount in config.get("mounts") or []:
        if not isinstance(mount, dict):
            continue
        options = mount.get("options") or []
        is_bind = mount.get("type") == "bind" or {"bind", "rbind"} & set(options)
        source = mount.get("source")
        if is_bind and isinstance(source, str) and source:
            where = f"the bind mount at {mount.get('destination')}"
            exposed.append((where, bundle / source))

    guarded = _Guarded(paths)
    for what, path in exposed:
        found = guarded.exposed_by(Path(os.path.realpath(path)))
        if found is not None:
            raise ConfigError(
                f"{what} ({path}) would show the container cvtpm's {found},"
                " where the keys of every vTPM are; mount something else"
            )


class _Guarded:
    """What no container may see: cvtpm's directories and keys, by inode."""

    def __init__(self, paths: Paths):
        self.directories = {}  # (dev, ino) of the state and run directories
        self.ancestors = {}  # (dev, ino) of them and every directory above
        self.secrets = {}  # (dev, ino) of the key files
        for directory in (paths.state, paths.run):
            if (key := _inode(directory)) is not None:
                self.directories[key] = directory
            for holder in (directory, *directory.parents):
                if (key := _inode(holder)) is not None:
                    self.ancestors.setdefault(key, directory)
        for secret in [paths.state / "master.key", *sorted(paths.ca.glob("*.key"))]:
            if (key := _inode(secret)) is not None:
                self.secrets[key] = secret

    def exposed_by(self, path: Path) -> Path | None:
        """The guarded directory or key `path` would show, or None."""
        key = _inode(path)
        if key in self.secrets:
            return self.secrets[key]
        if key in self.ancestors:
            return self.ancestors[key]  # it holds the directory
        for holder in (path, *path.parents):
            found = self.directories.get(_inode(holder))
            if found is not None:
                return found  # it lies inside the directory
        return None


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _expose(
    expose: str, pid: int, rootfs: Path, response: dict[str, Any]
) -> tuple[str, list[str]]:
    if expose == "socket":
        # Only the filter's socket is ever exposed, never the vTPM's own.
        socket = response.get("filter_socket")
        if not socket:
            raise StateError("the daemon's answer names no filter_socket")
        created = exposure.expose_socket(pid, rootfs, Path(socket).parent)
        return str(exposure.CONTAINER_SOCKET), [str(p) for p in created]

    device = response.get("device") or {}
    if not device.get("tpm") or not device.get("tpmrm"):
        raise StateError("the daemon's answer names no device.tpm and device.tpmrm")
    nodes = exposure.device_nodes(Path(device["tpm"]), Path(device["tpmrm"]))
    exposure.expose_devices(pid, rootfs, nodes)
    return ",".join(str(node.inside) for node in nodes), []


def _record_path(paths: Paths, name: str) -> Path:
    return paths.run / "hooks" / f"{name}.json"


def _write_record(paths: Paths, name: str, record: dict[str, Any]) -> None:
    path = _record_path(paths, name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _pop_record(paths: Paths, name: str) -> dict[str, Any] | None:
    path = _record_path(paths, name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return record
