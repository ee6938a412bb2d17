"""PidWatcher: one callback per exited process, none for a live one."""

from __future__ import annotations

import subprocess
import threading

from cvtpm.pidwatch import PidWatcher


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
