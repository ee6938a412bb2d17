"""Execs that record nothing, answered by the agent's reader without Python.

The exec of a program that every list of the container's chain holds at this
version (the kernel's IMA_MEASURED, with an unchanged i_version) records
nothing, and neither does the open the exec makes when no policy of the chain
measures a FILE_CHECK with MAY_EXEC.  Once the agent has judged such an exec,
its reader (the C module _execcache) answers the same exec made the same way
itself, with the GIL released, and hands every other event over.

"The same way" is through the same mount, named by the unique mount id
statx(2) gives since Linux 6.8: a mount belongs to one mount namespace, and
finding it costs nothing, while reading a new process's /proc/PID/ns/mnt
costs a cached exec about 25 us.  Older kernels fall back to the thread's
mount namespace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from cvtpm.ima.policy import Func
from cvtpm.measure import procinfo
from cvtpm.measure._execcache import ExecCache as _Table
from cvtpm.measure._execcache import where
from cvtpm.measure.eventfile import EventFile
from cvtpm.measure.fanotify import Event


def exec_opens_unmeasured(chain: Sequence) -> bool:
    """True if no policy of the chain of containers can measure an exec's open.

    That open is a FILE_CHECK with MAY_EXEC (fs/exec.c, do_open_execat); a
    rule that may measure it, whatever else it asks of the thread or file,
    keeps every exec in the chain with the agent.
    """
    for container in chain:
        rules_for = getattr(container.policy, "rules_for", None)
        if rules_for is None or rules_for(Func.FILE_CHECK, procinfo.MAY_EXEC):
            return False
    return True


class ExecCache:
    """The file versions whose exec is allowed as read, and where.

    The agent adds a version once it has judged an exec of it to record
    nothing, for the container it judged it for, and forgets a container
    when it stops being measured, and when a container starts: a mount
    namespace's inode number, and on old kernels a mount id, may come back
    as another container's.
    """

    def __init__(self):
        self._table = _Table()

    def serve(
        self,
        group: int,
        wake: int,
        busy_poll: float,
        handle: Callable[[list[Event]], None],
    ) -> None:
        """Read `group` until `wake` is readable, handing the agent its events.

        `handle` gets, in the order read, every event the table does not
        answer.  See Agent.run for `busy_poll`.
        """

        def hand_over(raw: list[tuple[int, int, int]]) -> None:
            handle([Event(mask, fd, pid) for mask, fd, pid in raw])

        self._table.serve(group, wake, busy_poll, hand_over)

    def add(self, owner: int, tid: int, file: EventFile) -> bool:
        """Let later execs of this version of `file` made as thread `tid`
        made this one through, for the container of mount namespace `owner`.

        False when the table is full, or where the access was made cannot be
        read: those execs then go to the agent.
        """
        try:
            made = where(file.fd, tid)
        except OSError:
            return False
        return self._table.add(owner, made, *file.key, *file.version)

    def admit(self, container, measured: Iterable) -> None:
        """Decide whether the reader may answer a new container's execs.

        It may not while another measured container's processes can see its
        processes, or it theirs (a shared pid namespace, or one above the
        other): they could run its programs through /proc/PID/root, and the
        reader, which knows the mount and not the thread, would answer for
        the wrong list.  Its own ancestors and descendants are not others:
        their lists get what its list gets.  The decision stays made for the
        container's life.  `measured` holds the containers measured now.
        """
        mine = container.pid_namespaces
        container.exec_cache = mine is not None
        for other in measured:
            if other is container or container in other.chain():
                continue
            if other in container.chain():
                continue
            theirs = other.pid_namespaces
            if mine is None or theirs is None or mine[0] in theirs or theirs[0] in mine:
                container.exec_cache = False
                if other.exec_cache:
                    other.exec_cache = False
                    self.forget(other.mnt_ns)

    def forget(self, owner: int) -> None:
        """Drop what the container of mount namespace `owner` let through."""
        self._table.forget(owner)

    def clear(self) -> None:
        """Drop everything."""
        self._table.clear()

    @property
    def answered(self) -> int:
        """How many execs the reader has answered itself."""
        return self._table.answered

    def __len__(self) -> int:
        return len(self._table)
