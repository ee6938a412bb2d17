"""The two read/write violations of the kernel's IMA, kept per list.

ima_rdwr_violation_check (security/integrity/ima/ima_main.c) logs a violation
entry when a file is opened for write while a measured reader has it open
(ToMToU: time of measure, time of use), and when a file is measured for a
reader while someone has it open for write (open_writers).  The kernel keeps
the flags in the inode's iint; here they are kept for each list, since each
container's list must carry its own violations.
"""

from __future__ import annotations

import threading

from cvtpm.measure import procinfo
from cvtpm.measure.container import Container
from cvtpm.measure.eventfile import EventFile

Key = tuple[int, int]  # (st_dev, st_ino)


class ReadWriteViolations:
    """Which lists measured each file for a reader (the kernel's
    IMA_MAY_EMIT_TOMTOU), and the two checks made on an access."""

    def __init__(self):
        self._readers: dict[Key, set[Container]] = {}
        self._lock = threading.Lock()

    def readers_of(self, key: Key) -> set[Container]:
        """The lists that measured the file for a reader since it was last written."""
        with self._lock:
            return set(self._readers.get(key, ()))

    def forget(self, container: Container) -> None:
        """A list that is no longer measured takes no more violations."""
        with self._lock:
            for readers in self._readers.values():
                readers.discard(container)

    def tomtou(self, file: EventFile) -> bool:
        """True if a write open of `file` is a ToMToU for its measured readers.

        ima_rdwr_violation_check tests i_readcount; /proc/*/fd stands in.  The
        readers are forgotten then: one violation per reader period.
        """
        if not procinfo.open_for_read_elsewhere(*file.key):
            return False
        with self._lock:
            self._readers.pop(file.key, None)
        return True

    def open_writers(self, c: Container, file: EventFile) -> bool:
        """True if measuring `file` for a reader of `c` is an open_writers violation.

        Notes `c` as a measured reader (for ToMToU) either way.  The violation
        is logged once per writer period: the kernel clears its flag when the
        last writer closes; here the first read open that finds no writer does.
        """
        with self._lock:
            self._readers.setdefault(file.key, set()).add(c)

        if procinfo.open_for_write(file.fd):
            if file.key not in c.emitted_open_writers:
                c.emitted_open_writers.add(file.key)
                return True
        else:
            c.emitted_open_writers.discard(file.key)
        return False
