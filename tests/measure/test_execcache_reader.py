"""The reader that answers cached execs: its table, and serve() read from a
socket pair standing in for a fanotify group (pure parsing: what is read,
what is answered, what is handed over).  tests/measure/test_execcache.py
runs the agent using it against the real kernel."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from cvtpm.measure._execcache import ExecCache as Table

from cvtpm.measure import fanotify, procinfo

EXEC = fanotify.FAN_OPEN_EXEC_PERM
OPEN = fanotify.FAN_OPEN_PERM

# -- the table --------------------------------------------------------------


def test_the_table_adds_forgets_and_clears():
    table = Table()
    assert table.add(5, 1, 2, 3, 4) is True
    assert table.add(5, 1, 2, 3, 4) is True  # twice is once
    assert table.add(5, 1, 2, 3, 5) is True
    assert table.add(6, 1, 2, 3, 4) is True
    assert len(table) == 3

    table.forget(5)
    assert len(table) == 1
    table.forget(7)  # nothing allowed there
    assert len(table) == 1
    table.clear()
    assert len(table) == 0


def test_the_table_refuses_a_namespace_no_thread_can_have():
    table = Table()
    for ns in (0, 2**64 - 1):
        with pytest.raises(ValueError, match="mount namespace"):
            table.add(ns, 1, 2, 3, 4)
        with pytest.raises(ValueError, match="mount namespace"):
            table.forget(ns)
    assert len(table) == 0


def test_a_full_table_says_so_and_takes_more_after_a_forget():
    table = Table()
    count = 0
    while table.add(7, count, 1, 1, 1):
        count += 1
    assert count == len(table) == 2**17

    table.forget(7)
    assert len(table) == 0
    assert table.add(7, 1, 1, 1, 1) is True


def test_the_table_and_serve_take_their_own_arguments_only():
    with pytest.raises(TypeError):
        Table(1)
    with pytest.raises(TypeError):
        Table().serve("group", 0, 0.0, print)


# -- serve(), with a socket pair for the group ---------------------------------


class FakeGroup:
    """A socket pair standing in for a fanotify group: events in, answers out."""

    def __init__(self, tmp_path):
        self.ours, self.kernel = socket.socketpair(
            socket.AF_UNIX, socket.SOCK_SEQPACKET
        )
        self.wake_r, self.wake_w = os.pipe()
        self.program = tmp_path / "program"
        self.program.write_bytes(b"program")
        self.table = Table()
        self.handed: list[list[tuple[int, int, int]]] = []

    def fd(self) -> int:
        """A new fd on the program, as the kernel puts one in every event."""
        return os.open(self.program, os.O_RDONLY)

    def allow(self, fd: int) -> None:
        st = os.fstat(fd)
        self.table.add(
            procinfo.mnt_ns_of(os.getpid()),
            st.st_dev,
            st.st_ino,
            st.st_ctime_ns,
            st.st_mtime_ns,
        )

    def serve(
        self, *events: tuple[int, int, int], vers: int = 3
    ) -> list[tuple[int, int]]:
        """Queue `events` (mask, fd, pid) in one read; serve it; the answers."""
        size = fanotify._METADATA.size
        self.kernel.send(
            b"".join(
                fanotify._METADATA.pack(size, vers, 0, size, mask, fd, pid)
                for mask, fd, pid in events
            )
        )
        os.write(self.wake_w, b"x")  # served after the queue: poll reports both
        self.table.serve(self.ours.fileno(), self.wake_r, 0.0, self.handed.append)
        answers = []
        self.kernel.setblocking(False)
        while True:
            try:
                answers.append(fanotify._RESPONSE.unpack(self.kernel.recv(64)))
            except BlockingIOError:
                return answers

    def close(self):
        self.ours.close()
        self.kernel.close()
        os.close(self.wake_r)
        os.close(self.wake_w)


@pytest.fixture
def group(tmp_path):
    g = FakeGroup(tmp_path)
    yield g
    g.close()


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_an_allowed_exec_and_its_open_are_answered_and_closed(group):
    fd_exec, fd_open = group.fd(), group.fd()
    group.allow(fd_exec)
    pid = os.getpid()

    answers = group.serve((EXEC, fd_exec, pid), (OPEN, fd_open, pid))

    assert answers == [(fd_exec, fanotify.FAN_ALLOW), (fd_open, fanotify.FAN_ALLOW)]
    assert closed(fd_exec) and closed(fd_open)
    assert group.handed == []
    assert group.table.answered == 1


def test_everything_else_is_handed_over_in_order_and_left_open(group):
    pid = os.getpid()
    unknown, plain_open, overflow, notice = group.fd(), group.fd(), -1, group.fd()

    answers = group.serve(
        (EXEC, unknown, pid),  # a version not in the table
        (OPEN, plain_open, pid),  # no exec of its own answered before it
        (fanotify.FAN_Q_OVERFLOW, overflow, pid),
        (0x20, notice, pid),  # FAN_OPEN, no permission asked
    )

    assert answers == []
    assert group.handed == [
        [
            (EXEC, unknown, pid),
            (OPEN, plain_open, pid),
            (fanotify.FAN_Q_OVERFLOW, -1, pid),
            (0x20, notice, pid),
        ]
    ]
    assert not any(closed(fd) for fd in (unknown, plain_open, notice))
    for fd in (unknown, plain_open, notice):
        os.close(fd)


def test_the_open_after_an_exec_must_be_the_same_file(group, tmp_path):
    other = tmp_path / "other"
    other.write_bytes(b"other")
    fd_exec, fd_other = group.fd(), os.open(other, os.O_RDONLY)
    group.allow(fd_exec)
    pid = os.getpid()

    answers = group.serve((EXEC, fd_exec, pid), (OPEN, fd_other, pid))

    assert answers == [(fd_exec, fanotify.FAN_ALLOW)]
    assert group.handed == [[(OPEN, fd_other, pid)]]
    os.close(fd_other)


def test_a_changed_file_is_no_longer_allowed(group):
    fd_old = group.fd()
    group.allow(fd_old)
    with open(group.program, "ab") as f:
        f.write(b" changed")  # new mtime and ctime: a new version
    fd_new = group.fd()
    pid = os.getpid()

    answers = group.serve((EXEC, fd_new, pid))

    assert answers == []
    assert group.handed == [[(EXEC, fd_new, pid)]]
    os.close(fd_new)
    os.close(fd_old)


def test_a_version_allowed_in_another_namespace_is_handed_over(group):
    fd = group.fd()
    st = os.fstat(fd)
    other = procinfo.mnt_ns_of(os.getpid()) + 1
    group.table.add(other, st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns)

    assert group.serve((EXEC, fd, os.getpid())) == []
    assert group.handed == [[(EXEC, fd, os.getpid())]]
    os.close(fd)


def test_an_unknown_metadata_version_ends_serve_after_handing_over(group):
    pid = os.getpid()
    first = group.fd()
    size = fanotify._METADATA.size
    group.kernel.send(
        fanotify._METADATA.pack(size, 3, 0, size, OPEN, first, pid)
        + fanotify._METADATA.pack(size, 4, 0, size, OPEN, 99, pid)
    )

    with pytest.raises(OSError, match="metadata version 4"):
        group.table.serve(group.ours.fileno(), group.wake_r, 0.0, group.handed.append)
    assert group.handed == [[(OPEN, first, pid)]]
    os.close(first)


def test_what_the_handler_raises_ends_serve(group):
    fd = group.fd()
    group.kernel.send(fanotify._METADATA.pack(24, 3, 0, 24, OPEN, fd, os.getpid()))

    def fail(events):
        raise KeyError("the handler's own")

    with pytest.raises(KeyError, match="the handler's own"):
        group.table.serve(group.ours.fileno(), group.wake_r, 0.0, fail)
    os.close(fd)


def test_serve_cannot_run_twice_at_once(group):
    fd = group.fd()
    group.kernel.send(fanotify._METADATA.pack(24, 3, 0, 24, OPEN, fd, os.getpid()))
    seen = []

    def again(events):
        with pytest.raises(RuntimeError, match="already running"):
            group.table.serve(group.ours.fileno(), group.wake_r, 0.0, print)
        seen.append(events)
        os.write(group.wake_w, b"x")

    group.table.serve(group.ours.fileno(), group.wake_r, 0.0, again)
    assert seen == [[(OPEN, fd, os.getpid())]]
    os.close(fd)


def test_serve_returns_on_wake_and_lets_other_threads_run(group):
    """The GIL is released while serve waits: another thread wakes it."""
    timer = threading.Timer(0.2, os.write, (group.wake_w, b"x"))
    timer.start()
    group.table.serve(group.ours.fileno(), group.wake_r, 0.0, group.handed.append)
    timer.join()
    assert group.handed == []


def test_a_thread_that_is_gone_is_handed_over(group):
    """Its namespace cannot be read, through a pidfd or /proc."""
    fd = group.fd()
    group.allow(fd)
    gone = 2**22 + 12345  # above the largest pid Linux hands out

    assert group.serve((EXEC, fd, gone)) == []
    assert group.handed == [[(EXEC, fd, gone)]]
    os.close(fd)


def test_a_closed_group_is_an_oserror(group, tmp_path):
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(OSError):
        group.table.serve(r, group.wake_r, 0.0, print)
