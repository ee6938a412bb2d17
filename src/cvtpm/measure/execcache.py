"""Execs that record nothing, answered by the agent's reader without Python.

The exec of a program that every list of the container's chain holds at this
version (the kernel's IMA_MEASURED, with an unchanged i_version) records
nothing, and neither does the open the exec makes when no policy of the chain
measures a FILE_CHECK with MAY_EXEC.  Once the agent has judged such an exec,
its reader (the C module _execcache) answers the same exec by a thread of
the same mount namespace itself, with the GIL released, and hands every other
event over.  The thread's namespace is what decides, as in the agent: the
mount the file was reached through would let one container's threads run
another's programs unrecorded (through /proc/PID/root, or a passed fd).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cvtpm.ima.policy import Func
from cvtpm.measure import procinfo
from cvtpm.measure._execcache import ExecCache as _Table
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
    """Per mount namespace, the file versions whose exec is allowed as read.

    The agent adds a version once it has judged an exec of it to record
    nothing, and forgets a namespace when its container stops being measured
    and when a container starts: a namespace's inode number may come back as
    another container's.
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

    def add(self, mnt_ns: int, file: EventFile) -> bool:
        """Let later execs of this version of `file` by threads of `mnt_ns` through.

        False when the table is full: those execs then go to the agent.
        """
        return self._table.add(mnt_ns, *file.key, *file.version)

    def forget(self, mnt_ns: int) -> None:
        """Drop what was let through in a namespace."""
        self._table.forget(mnt_ns)

    def clear(self) -> None:
        """Drop everything."""
        self._table.clear()

    @property
    def answered(self) -> int:
        """How many execs the reader has answered itself."""
        return self._table.answered

    def __len__(self) -> int:
        return len(self._table)
