"""fanotify(7) permission events through libc, as the agent needs them.

Constants and layouts come from include/uapi/linux/fanotify.h; only what the
measurement agent uses is bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

# fanotify_init() flags (include/uapi/linux/fanotify.h).
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_CONTENT = 0x00000004
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
FAN_REPORT_TID = 0x00000100

# fanotify_mark() flags.
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FILESYSTEM = 0x00000100

# Event mask bits.
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_Q_OVERFLOW = 0x00004000

# Responses.
FAN_ALLOW = 0x01
FAN_DENY = 0x02

FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100

# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len,
# mask (aligned u64), fd, pid.  The agent's reader (_execcache.c) parses it;
# this layout is for tests that write events.
_METADATA = struct.Struct("=IBBHQii")
# struct fanotify_response: fd, response.
_RESPONSE = struct.Struct("=iI")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_libc.fanotify_mark.restype = ctypes.c_int


@dataclass(frozen=True)
class Event:
    """One fanotify event: what happened (mask), to which file (fd), by whom (pid)."""

    mask: int
    fd: int
    pid: int

    @property
    def is_permission(self) -> bool:
        """True when the kernel waits for an answer before the access goes on."""
        return bool(self.mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM))


def init_group(*, nonblock: bool = True) -> int:
    """Create a content-class group that reports thread ids; returns its fd.

    FAN_REPORT_TID makes the event's pid the thread that opened the file, so
    /proc/<tid>/syscall shows the open(2) flags of exactly that thread.
    """
    flags = (
        FAN_CLASS_CONTENT
        | FAN_CLOEXEC
        | FAN_UNLIMITED_QUEUE
        | FAN_UNLIMITED_MARKS
        | FAN_REPORT_TID
    )
    if nonblock:
        flags |= FAN_NONBLOCK

    # The event fds are opened read-only: the agent only hashes through them.
    fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_init: {os.strerror(err)}")
    return fd


def mark(group: int, path: str | os.PathLike, mask: int, *, filesystem=False) -> None:
    """Add `mask` to the mount (or the whole filesystem) that holds `path`."""
    kind = FAN_MARK_FILESYSTEM if filesystem else FAN_MARK_MOUNT
    _mark(group, FAN_MARK_ADD | kind, mask, path)


def unmark(group: int, path: str | os.PathLike, mask: int, *, filesystem=False) -> None:
    """Remove `mask` from the mark on the mount (or filesystem) that holds `path`."""
    kind = FAN_MARK_FILESYSTEM if filesystem else FAN_MARK_MOUNT
    _mark(group, FAN_MARK_REMOVE | kind, mask, path)


def _mark(group: int, flags: int, mask: int, path: str | os.PathLike) -> None:
    rc = _libc.fanotify_mark(group, flags, mask, AT_FDCWD, os.fsencode(path))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_mark {os.fspath(path)}: {os.strerror(err)}")


def respond(group: int, fd: int, allow: bool) -> None:
    """Answer a permission event: the blocked open or exec continues or fails."""
    os.write(group, _RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY))


def deny_orphans(group: int, fd_limit: int) -> int:
    """Deny permission events a dead reader of this group left unanswered.

    The kernel matches a response to a pending event by the fd number the
    reader was given (fs/notify/fanotify/fanotify_user.c,
    process_access_response); when a reader dies, its events stay pending
    and their processes stay blocked.  A new reader that inherited the group
    answers every number the dead one could have held; only pending ones
    match, the rest fail with ENOENT.  This must run before reading any new
    event, whose fd numbers could collide with the orphans'.  Returns how many
    were denied.
    """
    denied = 0
    for fd in range(fd_limit):
        try:
            os.write(group, _RESPONSE.pack(fd, FAN_DENY))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise
            continue
        denied += 1
    return denied
