"""A runc bundle for `cvtpm run`: config.json written from a small OCI spec.

The spec follows what `runc spec` generates (OCI runtime spec 1.0.2): fresh pid,
ipc, uts, mount and network namespaces, /proc, a tmpfs /dev, read-only /sys, the
default capability set, masked and read-only kernel paths. It adds what cvtpm
needs: a tmpfs on /run (where the TPM sockets are mounted, so nothing is left in
the rootfs), the hooks, the annotations of the request and the TCTI environment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtpm.config import Paths
from cvtpm.runtime import oci
from cvtpm.runtime.expose import device_cgroup_rules, tcti_env
from cvtpm.runtime.install import runc_hooks

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# runc's default set (libcontainer/specconv/example.go).
CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


@dataclass(frozen=True)
class RunSpec:
    """What `cvtpm run` was asked to run."""

    rootfs: Path
    args: list[str]
    name: str
    hostname: str = "cvtpm"
    ephemeral: bool = False
    policy: Path | None = None
    parent: str | None = None
    expose: str = "socket"
    binds: list[tuple[Path, Path]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def annotations(spec: RunSpec) -> dict[str, str]:
    """The io.cvtpm.* annotations the hook reads back."""
    values = {
        oci.ANNOTATION_ENABLE: oci.ENABLED,
        oci.ANNOTATION_NAME: spec.name,
        oci.ANNOTATION_EXPOSE: spec.expose,
    }
    if spec.ephemeral:
        values[oci.ANNOTATION_EPHEMERAL] = "true"
    if spec.policy is not None:
        values[oci.ANNOTATION_POLICY] = str(spec.policy.absolute())
    if spec.parent:
        values[oci.ANNOTATION_PARENT] = spec.parent
    return values


def oci_config(spec: RunSpec, paths: Paths) -> dict[str, Any]:
    """The config.json of the bundle."""
    env = {"PATH": DEFAULT_PATH, "TERM": "xterm", **tcti_env(spec.expose), **spec.env}
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.args),
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {
                kind: list(CAPABILITIES)
                for kind in ("bounding", "effective", "permitted")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs.resolve()), "readonly": False},
        "hostname": spec.hostname,
        "mounts": _mounts(spec),
        "hooks": runc_hooks(paths),
        "annotations": annotations(spec),
        "linux": {
            "namespaces": [
                {"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")
            ],
            "resources": {"devices": _device_rules(spec)},
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    return config


def write_bundle(directory: Path, config: dict[str, Any]) -> Path:
    """Write config.json into `directory`; returns the bundle directory."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _mounts(spec: RunSpec) -> list[dict[str, Any]]:
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": [
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755", "size=16384k"],
        },
    ]
    for host, inside in spec.binds:
        mounts.append(
            {
                "destination": str(inside),
                "type": "bind",
                "source": str(host.absolute()),
                "options": ["rbind", "ro", "nosuid", "nodev"],
            }
        )
    return mounts


def _device_rules(spec: RunSpec) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    if spec.expose == "device":
        # Under cgroup v2 the hook cannot add device rules later (see expose.py).
        rules.extend(device_cgroup_rules())
    return rules
