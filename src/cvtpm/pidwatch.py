"""Watching processes through pidfds: a callback when one of them exits.

A pidfd refers to one process and becomes readable when it exits, so a
reused pid can never be mistaken for the watched process (pidfd_open(2)).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PidWatcher:
    """Calls `on_exit(key)` once for each watched process that exits.

    `run()` is the loop, for a thread of its own; `on_exit` runs on that
    thread, after the key is forgotten, so it may watch the key again.
    """

    def __init__(self, on_exit: Callable[[str], None]):
        self.on_exit = on_exit
        self._pidfds: dict[str, int] = {}
        self._keys: dict[int, str] = {}  # the other way round
        self._lock = threading.Lock()
        # epoll, not poll: a pidfd is added from the caller's thread while
        # run() waits, so a watch costs no wake-up and no rebuilt fd set
        # (a host watches thousands of processes).
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._stopping = threading.Event()

    def watch(self, key: str, pid: int) -> bool:
        """Watch process `pid` under `key` (replacing its last); False if it is gone."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        with self._lock:
            old = self._pidfds.pop(key, None)
            if old is not None:
                self._forget(old)
            self._pidfds[key] = pidfd
            self._keys[pidfd] = key
            self._epoll.register(pidfd, select.EPOLLIN)
        return True

    def unwatch(self, key: str) -> None:
        """Stop watching `key`; nothing is called for it any more."""
        with self._lock:
            pidfd = self._pidfds.pop(key, None)
            if pidfd is not None:
                self._forget(pidfd)

    def watched(self) -> list[str]:
        """The keys being watched."""
        with self._lock:
            return sorted(self._pidfds)

    def run(self) -> None:
        """Wait for exits until `stop()`."""
        try:
            while not self._stopping.is_set():
                for fd, _ in self._epoll.poll():
                    if fd == self._wake_r:
                        _drain(self._wake_r)
                        continue
                    with self._lock:
                        key = self._keys.get(fd)
                    if key is not None:
                        self._exited(key, fd)
        finally:
            # The wake-up pipe stays: stop() may still be writing to it.
            self._epoll.close()

    def stop(self) -> None:
        """End `run()` and release every pidfd (once; later calls do nothing)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        os.write(self._wake_w, b"s")
        with self._lock:
            for fd in list(self._keys):
                self._forget(fd)
            self._pidfds.clear()

    def _forget(self, pidfd: int) -> None:
        # Unregistered before it is closed: a copy of the pidfd in a forked
        # child would otherwise keep it in the epoll set (call with the lock).
        self._keys.pop(pidfd, None)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(pidfd)
        os.close(pidfd)

    def _exited(self, key: str, pidfd: int) -> None:
        with self._lock:
            if self._pidfds.get(key) != pidfd or not _readable(pidfd):
                # Unwatched or replaced meanwhile; or the event was for a
                # pidfd closed since, whose number a live process's now has.
                return
            del self._pidfds[key]
            self._forget(pidfd)
        try:
            self.on_exit(key)
        except Exception:
            # A failing callback must not end the watch of every other process.
            log.exception("handling the exit of %s failed", key)


def _readable(pidfd: int) -> bool:
    """True if the process of `pidfd` has exited (its pidfd polls readable)."""
    # poll, not select: select cannot take a descriptor of 1024 or more.
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def is_alive(pid: int) -> bool:
    """True if process `pid` runs: a zombie, whose exit is not yet collected,
    has ended."""
    return _stat_fields(pid) is not None


def process_identity(pid: int) -> str | None:
    """What tells process `pid` from any other that has had or will have its
    pid: the boot's id and the process's start time; None if no such process
    runs. For records that outlive a pidfd (a daemon's restart)."""
    fields = _stat_fields(pid)
    # After "(comm)": state is field 3 of proc(5), starttime field 22.
    if fields is None or len(fields) < 20:
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
    except OSError:
        return None
    return f"{boot_id}:{fields[19]}"


def is_same_process(pid: int, identity: str) -> bool:
    """True if `pid` still runs the process whose `process_identity` was
    `identity` (an empty one, from an older record, trusts the pid alone)."""
    if not identity:
        return is_alive(pid)
    return process_identity(pid) == identity


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after "(comm)", or None for no live process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields
