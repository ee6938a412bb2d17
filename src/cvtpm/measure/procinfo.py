"""What /proc tells about the thread behind a fanotify event and about a file.

The kernel's IMA sees the opening task and the struct file directly; from user
space the same facts come from /proc, read while the thread is still blocked
in its open or exec (so its pid cannot be reused meanwhile).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import platform
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

# Permission mask bits as IMA passes them to its policy (include/linux/fs.h).
MAY_EXEC = 0x1
MAY_WRITE = 0x2
MAY_READ = 0x4
MAY_APPEND = 0x8

# Syscall numbers of the calls that open a file, per architecture
# (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
_SYSCALLS = {
    "x86_64": {"open": 2, "creat": 85, "openat": 257, "openat2": 437},
    "aarch64": {"openat": 56, "openat2": 437},
}
_EXECS = {"x86_64": (59, 322), "aarch64": (221, 281)}

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_RDLCK = 0
_F_UNLCK = 2


@dataclass(frozen=True)
class Task:
    """The thread that caused an event: its mount namespace, parent and ids.

    The mount namespace is read at once (every event needs it to find its
    container); the rest of /proc/TID/status only when first asked for.
    """

    tid: int
    mnt_ns: int

    @cached_property
    def _status(self) -> dict[bytes, list[bytes]]:
        fields = {}
        with open(f"/proc/{self.tid}/status", "rb") as f:
            for line in f:
                key, _, value = line.partition(b":")
                if key in (b"Tgid", b"PPid", b"Uid"):
                    fields[key] = value.split()
        return fields

    @property
    def tgid(self) -> int:
        return int(self._status[b"Tgid"][0])

    @property
    def ppid(self) -> int:
        return int(self._status[b"PPid"][0])

    @property
    def uid(self) -> int:
        return int(self._status[b"Uid"][0])

    @property
    def euid(self) -> int:
        return int(self._status[b"Uid"][1])


def task(tid: int) -> Task:
    """The thread `tid`, as far as an event needs it (see Task)."""
    return Task(tid=tid, mnt_ns=mnt_ns_of(tid))


def nearest_ancestor_in(
    child: Task, namespaces: Collection[int], depth: int = 64
) -> Task | None:
    """The nearest ancestor of `child` whose mount namespace is in `namespaces`.

    None when there is none within `depth` generations below init, or when
    an ancestor exits while the chain is followed.
    """
    ppid = child.ppid
    for _ in range(depth):
        if ppid <= 1:
            return None
        try:
            parent = task(ppid)
        except (OSError, KeyError):
            return None
        if parent.mnt_ns in namespaces:
            return parent
        ppid = parent.ppid
    return None


def mnt_ns_of(pid: int) -> int:
    """The inode number of a process's mount namespace (/proc/PID/ns/mnt).

    Read from the link's text, "mnt:[INODE]" (fs/nsfs.c, ns_get_name), which
    names the inode a stat() of the link would reach, without the nsfs
    lookup the stat adds (every exec event asks this of a new process).
    """
    link = os.readlink(f"/proc/{pid}/ns/mnt")
    if not (link.startswith("mnt:[") and link.endswith("]")):
        raise OSError(errno.EPROTO, f"/proc/{pid}/ns/mnt links to {link!r}")
    return int(link[5:-1])


def open_mask(tid: int) -> int | None:
    """The MAY_* mask of the open the thread is blocked in, or None if unknown.

    The open's flags are not in the fanotify event, but the thread is still
    inside the system call, and /proc/TID/syscall shows its number and
    arguments (fs/proc/base.c, proc_pid_syscall).  None for opens the kernel
    makes on a thread's behalf (io_uring, overlayfs copy-up) and for
    architectures not in the table.
    """
    arch = platform.machine()
    numbers = _SYSCALLS.get(arch)
    if numbers is None:
        return None
    try:
        with open(f"/proc/{tid}/syscall", "rb") as f:
            parts = f.read().split()
    except OSError:
        return None
    if len(parts) < 4 or not parts[0].isdigit():
        return None
    nr = int(parts[0])
    args = [int(p, 16) for p in parts[1:7]]

    if nr in _EXECS[arch]:
        return MAY_EXEC
    if nr == numbers.get("open"):
        flags = args[1]
    elif nr == numbers.get("openat"):
        flags = args[2]
    elif nr == numbers.get("creat"):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    elif nr == numbers.get("openat2"):
        flags = _openat2_flags(tid, args[2])
        if flags is None:
            return None
    else:
        return None
    return flags_to_mask(flags)


def _openat2_flags(tid: int, how_address: int) -> int | None:
    # struct open_how starts with the u64 flags (include/uapi/linux/openat2.h).
    try:
        with open(f"/proc/{tid}/mem", "rb", buffering=0) as mem:
            mem.seek(how_address)
            raw = mem.read(8)
    except (OSError, ValueError, OverflowError):
        return None
    return int.from_bytes(raw, "little") if len(raw) == 8 else None


def flags_to_mask(flags: int) -> int:
    """Map open(2) flags to IMA's mask as fs/namei.c builds acc_mode."""
    accmode = flags & os.O_ACCMODE
    mask = 0
    if accmode in (os.O_RDONLY, os.O_RDWR):
        mask |= MAY_READ
    if accmode in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
        mask |= MAY_WRITE
    if flags & os.O_APPEND:
        mask |= MAY_APPEND
    return mask


def open_for_write(fd: int) -> bool:
    """True when someone has the file behind `fd` open for writing.

    A read lease is refused with EAGAIN exactly when the inode is open for
    write (fs/locks.c, check_conflicting_open: inode_is_open_for_write), which
    is the test ima_rdwr_violation_check makes.  `fd` must be read-only; the
    lease is dropped at once.
    """
    try:
        fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        raise
    fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
    return False


def open_for_read_elsewhere(dev: int, ino: int) -> bool:
    """True when a process other than this one holds the file open read-only.

    This stands in for the kernel's i_readcount.  It walks /proc/*/fd, so it
    is only called on the rare path (a write open of a file measured for a
    reader).  Files only mapped into memory (fd closed) are not seen.
    """
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if st.st_dev != dev or st.st_ino != ino:
                continue
            if _fd_is_read_only(pid, fd):
                return True
    return False


def _fd_is_read_only(pid: str, fd: str) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE == os.O_RDONLY
    except OSError:
        return False
    return False


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fs_magic(fd: int) -> int:
    """The f_type of the filesystem holding `fd` (fstatfs(2)), for `fsmagic=` rules."""
    # struct statfs begins with f_type, a long (bits/statfs.h); 120 bytes hold
    # the whole structure on every 64-bit Linux ABI.
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fstatfs: {os.strerror(err)}")
    return ctypes.c_ulong.from_buffer_copy(
        buf.raw[: ctypes.sizeof(ctypes.c_ulong)]
    ).value
