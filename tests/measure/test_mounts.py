"""Which of a container's mounts the agent marks, from its mountinfo."""

from __future__ import annotations

import os

from cvtpm.measure import mounts

# The shape of /proc/PID/mountinfo (proc(5)): optional fields before "-",
# and a mount point with a space written as \040.
MOUNTINFO = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    b"30 22 0:5 / /proc rw,nosuid - proc proc rw\n"
    b"31 22 0:6 / /dev rw,nosuid shared:2 master:3 - tmpfs tmpfs rw,mode=755\n"
    b"32 31 0:7 / /dev/pts rw - devpts devpts rw\n"
    b"40 22 8:1 /srv/data /my\\040volume ro - ext4 /dev/vda rw\n"
    b"41 22 0:8 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
    b"garbage line\n"
)


def test_mountinfo_points_and_types():
    """Each line gives its mount point (escapes undone) and filesystem type."""
    assert mounts.parse_mountinfo(MOUNTINFO) == [
        ("/", "ext4"),
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/my volume", "ext4"),
        ("/sys/fs/cgroup", "cgroup2"),
    ]


def test_the_mounts_of_this_process_root_first():
    """For a process after pivot_root (here: this one), its root, then every
    mount but the kernel's pseudo filesystems."""
    pid = os.getpid()
    root = f"/proc/{pid}/root"
    points = mounts.mount_points(pid)

    marked = mounts.container_mounts(pid, "/nonexistent-rootfs")

    assert marked[0] == root
    expected = {
        root + point
        for point, fstype in points
        if point != "/" and fstype not in mounts.PSEUDO_FILESYSTEMS
    }
    assert set(marked[1:]) == expected and len(marked) == len(set(marked))
    assert f"{root}/proc" not in marked
