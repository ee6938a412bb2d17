"""The mounts of a container that the agent marks: its root and every mount below.

A FAN_MARK_MOUNT mark covers one mount, so a mark on the container's root
alone would miss a program run from a tmpfs (/dev/shm, /run) or from a bind
mount or volume.  At a createRuntime hook the runtime has made every mount of
config.json under the rootfs, and has not yet pivoted into it.
"""

from __future__ import annotations

import os
import re

from cvtpm.errors import ParseError

# The kernel's own pseudo filesystems (mountinfo's type field): no image ships
# files on them and nothing on them is run; cvtpm's default policy measures
# nothing there (its dont_measure fsmagic rules). A mark would only put every
# read of /proc or /sys through the agent.
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "securityfs",
    "debugfs", "tracefs", "binfmt_misc", "selinuxfs", "smackfs", "nsfs",
    "efivarfs", "bpf", "configfs", "fusectl", "pstore",
})  # fmt: skip

# mountinfo writes space, tab, newline and backslash as \ooo (fs/proc_namespace.c,
# show_mountinfo: seq_path_root(..., " \t\n\\")).
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def container_mounts(pid: int, rootfs: str) -> list[str]:
    """The paths, as the host reaches them, of the container's mounts to mark.

    `pid` is the container's first process, `rootfs` its root filesystem's
    host path.  Before pivot_root (a createRuntime hook), when the process's
    root is still the host's, the mounts lie under `rootfs` in the
    container's namespace; after it (a daemon adopting a running container)
    the namespace's root is the container's.  The root comes first; kernel
    pseudo filesystems are left out.
    """
    proc_root = f"/proc/{pid}/root"
    # mountinfo shows clean paths with links resolved; so must the prefix be.
    base = os.path.realpath(rootfs).rstrip("/")
    if not _is_host_root(proc_root):
        base = ""  # pivoted: the namespace's root is the container's
    paths = [proc_root + base if base else proc_root]
    for point, fstype in mount_points(pid):
        below_root = point.startswith(base + "/") if base else point != "/"
        if not below_root or fstype in PSEUDO_FILESYSTEMS:
            continue
        path = proc_root + point
        if path not in paths:
            paths.append(path)
    return paths


def _is_host_root(proc_root: str) -> bool:
    """Whether a process's root is the host's, as before pivot_root.

    Asked of the directory itself, not of a path the container could make.
    """
    seen, host = os.stat(proc_root), os.stat("/")
    return (seen.st_dev, seen.st_ino) == (host.st_dev, host.st_ino)


def mount_points(pid: int) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each mount in `pid`'s namespace."""
    with open(f"/proc/{pid}/mountinfo", "rb") as info:
        return parse_mountinfo(info.read())


def parse_mountinfo(data: bytes) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line of a /proc/PID/mountinfo.

    Raises ParseError on a line that is not a mount (proc(5) has the format).
    """
    out = []
    for number, line in enumerate(data.splitlines(), 1):
        # ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
        fields = line.split(b" ")
        try:
            separator = fields.index(b"-", 6)
            fstype = fields[separator + 1].decode()
        except (ValueError, IndexError, UnicodeDecodeError):
            # Fail closed: a mount that cannot be read cannot be marked.
            raise ParseError(
                f"mountinfo line {number} is not a mount: {line!r}"
            ) from None
        point = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), fields[4])
        out.append((os.fsdecode(point), fstype))
    return out
