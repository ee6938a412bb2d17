"""Putting a container's TPM where its processes find it, from a createRuntime hook.

A createRuntime hook runs after the runtime has made the container's mount
namespace and mounted its rootfs, and before pivot_root (OCI runtime spec,
"createRuntime Hooks"; runc calls them from prepareRootfs in
libcontainer/rootfs_linux.go). The rootfs is then still reachable under its host
path inside that namespace, so a bind mount made there lands in the container and
never shows on the host; it disappears with the namespace.

Two ways, kept apart:

- socket: the daemon's filter sockets (`tpm.sock`, `tpm.sock.ctrl`) are bind-mounted
  read-only at /run/tpm; the container's TCTI is `swtpm:path=/run/tpm/tpm.sock`.
- device: on hosts with vtpm-proxy, the vTPM's /dev/tpmN and /dev/tpmrmN are made
  as /dev/tpm0 and /dev/tpmrm0 in the container, and allowed in its device cgroup.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cvtpm.errors import ConfigError, StateError
from cvtpm.runtime import mountns

log = logging.getLogger(__name__)

CONTAINER_TPM_DIR = Path("/run/tpm")
CONTAINER_SOCKET = CONTAINER_TPM_DIR / "tpm.sock"
SOCKET_TCTI = f"swtpm:path={CONTAINER_SOCKET}"
DEVICE_TCTI = "device:/dev/tpmrm0"
CONTAINER_DEVICES = {"tpm": Path("/dev/tpm0"), "tpmrm": Path("/dev/tpmrm0")}
VTPMX = Path("/dev/vtpmx")


def tcti_env(expose: str) -> dict[str, str]:
    """The environment that points TPM software inside the container at its TPM."""
    tcti = DEVICE_TCTI if expose == "device" else SOCKET_TCTI
    # tpm2-tools reads TPM2TOOLS_TCTI, tpm2-openssl TPM2OPENSSL_TCTI; libtss2's
    # TCTI loader reads no variable, so other programs take the string themselves.
    return {"TPM2TOOLS_TCTI": tcti, "TPM2OPENSSL_TCTI": tcti, "CVTPM_TCTI": tcti}


def resolve_expose(requested: str, vtpmx: Path = VTPMX) -> str:
    """`socket` or `device`: what `auto` means on this host, else the request."""
    if requested == "auto":
        return "device" if vtpmx.exists() else "socket"
    if requested == "device" and not vtpmx.exists():
        raise ConfigError(f"device exposure asked for, but {vtpmx} does not exist")
    return requested


def in_container(pid: int, rootfs: Path, inside: Path) -> Path:
    """A path inside the container's rootfs, reached from the host via /proc/PID/root.

    /proc/PID/root resolves in the container's mount namespace, so mounts the
    runtime already made there (a tmpfs on /run, /dev) are seen.
    """
    return Path(f"/proc/{pid}/root") / rootfs.relative_to("/") / inside.relative_to("/")


def ensure_directory(pid: int, rootfs: Path, inside: Path) -> list[Path]:
    """Create `inside` in the container's rootfs, refusing to follow any symlink.

    The image controls the rootfs: a symlink at /run could point the bind mount, or
    a mkdir, at a path of the host. Returns the directories made, outermost first.
    """
    created = []
    current = Path("/")
    for part in inside.relative_to("/").parts:
        current = current / part
        path = in_container(pid, rootfs, current)
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            path.mkdir(mode=0o755)
            created.append(current)
            continue
        if not stat.S_ISDIR(mode):
            raise StateError(f"{current} in the container is not a plain directory")
    return created


def remove_created(rootfs: Path, created: list[str]) -> None:
    """Remove, once the container is gone, the empty directories a hook made.

    Under a tmpfs /run they vanished with the container; a rootfs without one
    (podman --rootfs) keeps them on disk until this runs.
    """
    for inside in sorted(created, key=lambda p: len(Path(p).parts), reverse=True):
        path = rootfs / Path(inside).relative_to("/")
        if path.is_dir() and not path.is_symlink() and not os.path.ismount(path):
            try:
                path.rmdir()
            except OSError as exc:
                log.info("leaving %s in place: %s", path, exc)


# --- socket exposure -------------------------------------------------------------


def expose_socket(pid: int, rootfs: Path, filter_directory: Path) -> list[Path]:
    """Bind the filter's socket directory read-only at /run/tpm in the container.

    Returns the directories that had to be made in the rootfs for the mount point.
    """
    if not (filter_directory / "tpm.sock").is_socket():
        raise StateError(f"no filter socket in {filter_directory}")

    created = ensure_directory(pid, rootfs, CONTAINER_TPM_DIR)
    target = rootfs / CONTAINER_TPM_DIR.relative_to("/")

    # mount(2) needs the caller in the target's mount namespace (see
    # cvtpm.runtime.mountns); read-only keeps the container from replacing the
    # sockets, and connect(2) on a socket needs no write access to the mount.
    mountns.bind_readonly(pid, str(filter_directory), str(target))
    log.info("container pid %d: %s bound at %s", pid, filter_directory, target)
    return created


# --- device exposure -------------------------------------------------------------

# The devices are the daemon's vtpm-proxy chip (cvtpm.runtime.tpm_device): the
# kernel hands their commands to the daemon, which filters them as it filters
# the socket.


@dataclass(frozen=True)
class DeviceNode:
    """A character device to make in the container, with its host numbers."""

    inside: Path
    major: int
    minor: int


def device_nodes(tpm: Path, tpmrm: Path) -> list[DeviceNode]:
    """The container's /dev/tpm0 and /dev/tpmrm0 for the host's vTPM devices."""
    nodes = []
    for host, inside in (
        (tpm, CONTAINER_DEVICES["tpm"]),
        (tpmrm, CONTAINER_DEVICES["tpmrm"]),
    ):
        try:
            info = os.stat(host)
        except OSError as exc:
            raise StateError(f"the vTPM device {host} is missing: {exc}") from exc
        if not stat.S_ISCHR(info.st_mode):
            raise StateError(f"{host} is not a character device")
        nodes.append(DeviceNode(inside, os.major(info.st_rdev), os.minor(info.st_rdev)))
    return nodes


def expose_devices(pid: int, rootfs: Path, nodes: list[DeviceNode]) -> None:
    """Make the device nodes in the container's /dev and allow them in its cgroup."""
    for node in nodes:
        path = in_container(pid, rootfs, node.inside)
        if path.exists():
            path.unlink()
        os.mknod(path, 0o660 | stat.S_IFCHR, os.makedev(node.major, node.minor))
    allow_devices(pid, nodes)


def allow_devices(
    pid: int, nodes: list[DeviceNode], cgroup_root=Path("/sys/fs/cgroup")
):
    """Add the nodes to the container's device cgroup (cgroup v1 devices.allow).

    Under cgroup v2 the runtime enforces devices with an eBPF program fixed when
    the container is created, which a hook cannot amend: the rule must already be
    in config.json's linux.resources.devices (`cvtpm run` puts it there; with
    podman pass --device-cgroup-rule), so here it is only checked for.
    """
    v1 = _cgroup_v1_devices(pid, cgroup_root)
    if v1 is None:
        log.info("cgroup v2: device access for pid %d comes from the OCI config", pid)
        return
    for node in nodes:
        (v1 / "devices.allow").write_text(f"c {node.major}:{node.minor} rw\n")


def device_cgroup_rules(proc_devices: Path = Path("/proc/devices")) -> list[dict]:
    """linux.resources.devices entries allowing every tpm and tpmrm char device."""
    majors = {}
    for line in proc_devices.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1] in ("tpm", "tpmrm") and fields[0].isdigit():
            majors[fields[1]] = int(fields[0])
    # The first TPM chip is the misc device 10:224 (drivers/char/tpm/tpm-chip.c);
    # every vtpm-proxy chip after it uses the dynamic "tpm" major.
    rules = [{"allow": True, "type": "c", "major": 10, "minor": 224, "access": "rw"}]
    for major in majors.values():
        rules.append({"allow": True, "type": "c", "major": major, "access": "rw"})
    return rules


def _cgroup_v1_devices(pid: int, cgroup_root: Path) -> Path | None:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "devices" in controllers.split(","):
            return cgroup_root / "devices" / path.lstrip("/")
    return None
