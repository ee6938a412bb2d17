"""PidWatcher: one callback per exited process, none for a live one."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
from pathlib import Path

from cvtpm.pidwatch import PidWatcher, is_alive, is_same_process, process_identity


def test_an_exit_is_reported_once_and_a_live_process_never():
    """The watched process that exits is reported by its key; one still running
    is not, even when an event names its pidfd (a stale one, for a closed pidfd
    whose number it now has)."""
    exited: list[str] = []
    done = threading.Event()

    def on_exit(key: str) -> None:
        exited.append(key)
        done.set()

    watcher = PidWatcher(on_exit)
    short = subprocess.Popen(["sleep", "0.2"])
    long = subprocess.Popen(["sleep", "30"])
    try:
        assert watcher.watch("short", short.pid) and watcher.watch("long", long.pid)

        # As if poll() had woken for the long-lived process's pidfd.
        watcher._exited("long", watcher._pidfds["long"])
        assert exited == [] and watcher.watched() == ["long", "short"]

        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        assert done.wait(10)
        short.wait()
        assert exited == ["short"] and watcher.watched() == ["long"]
    finally:
        watcher.stop()
        long.kill()
        long.wait()


def test_processes_watched_while_it_waits():
    """Processes watched after run() has started waiting are reported when they
    exit (no wake-up is needed to add one); unwatched or replaced ones are not."""
    watcher, thread, exited, all_in = running_watcher(15)
    go = subprocess.Popen(["sleep", "30"])  # outlives the test: never reported
    children = []
    try:
        for i in range(20):
            child = subprocess.Popen(["sleep", "0.3"])
            children.append(child)
            assert watcher.watch(f"c{i}", child.pid)
        for i in range(15, 20):
            watcher.unwatch(f"c{i}")
        assert watcher.watch("c0", go.pid) is True  # c0 is now the long one
        replacement = subprocess.Popen(["sleep", "0.3"])
        children.append(replacement)
        assert watcher.watch("late", replacement.pid)

        assert all_in.wait(10)
        for child in children:
            child.wait()
        assert sorted(exited) == sorted([*(f"c{i}" for i in range(1, 15)), "late"])
        assert watcher.watched() == ["c0"]
    finally:
        watcher.stop()
        go.kill()
        go.wait()


def test_pidfds_numbered_past_1024(tmp_path):
    """A host with thousands of processes watched has pidfds of 1024 and more:
    their exits are reported like any other, and the watch goes on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    ballast = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    watcher, thread, exited, done = running_watcher(2)
    try:
        for key in ("first", "second"):
            child = subprocess.Popen(["true"])
            assert watcher.watch(key, child.pid)
            assert watcher._pidfds[key] >= 1024
            child.wait()
        assert done.wait(10) and sorted(exited) == ["first", "second"]
        assert thread.is_alive()
    finally:
        watcher.stop()
        watcher.stop()  # a second stop does nothing
        for fd in ballast:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    thread.join(10)
    assert not thread.is_alive()


def running_watcher(count: int):
    """A watcher whose run() has started: (watcher, its thread, the keys
    reported so far, an Event set once `count` have been)."""
    exited: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def on_exit(key: str) -> None:
        with lock:
            exited.append(key)
            if len(exited) == count:
                done.set()

    watcher = PidWatcher(on_exit)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    return watcher, thread, exited, done


def _zombie() -> subprocess.Popen:
    """A child that exited and whose exit is not yet collected."""
    child = subprocess.Popen(["true"])
    waited = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert waited.si_pid == child.pid
    return child


def test_a_process_is_told_from_a_later_one_with_its_pid():
    """process_identity is the boot and the start time: a live process keeps
    it, a zombie (exited, not yet collected) has none, and a process of
    another start time is not the same even under the same pid."""
    live = subprocess.Popen(["sleep", "30"])
    dead = _zombie()
    try:
        identity = process_identity(live.pid)
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert identity is not None and identity.startswith(f"{boot_id}:")
        assert is_same_process(live.pid, identity)
        assert is_same_process(live.pid, "")  # an old record: the pid alone
        assert is_alive(live.pid)

        assert process_identity(dead.pid) is None
        assert not is_alive(dead.pid)
        assert not is_same_process(dead.pid, "")

        boot, started = identity.split(":")
        assert not is_same_process(live.pid, f"{boot}:{int(started) + 1}")
        assert not is_same_process(live.pid, f"another-boot:{started}")
    finally:
        live.kill()
        live.wait()
        dead.wait()
