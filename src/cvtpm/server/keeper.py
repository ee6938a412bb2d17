"""The keeper: the small parent of the daemon that outlives its crashes.

The fanotify group is the keeper's. While the daemon (the worker) runs, it
answers the group's permission events; if the worker dies, even by SIGKILL, the
group stays open, so the kernel keeps every pending access blocked instead of
allowing it (fanotify_release in fs/notify/fanotify/fanotify_user.c allows
all pending events only when the last fd of a group is closed). The keeper
starts a new worker with the same group, which denies what the dead one left
unanswered and carries on. The keeper is also the subreaper that collects the
exit status of swtpm processes whose worker died.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

from cvtpm.measure import fanotify
from cvtpm.vtpm.swtpm import become_subreaper

log = logging.getLogger(__name__)

# The worker's exit status for "cannot start as configured" (sysexits.h
# EX_CONFIG): it said why, and starting it again would not help.
EXIT_CONFIG = 78
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
# A worker that ran this long before dying is not crash-looping.
_STABLE_AFTER = 30.0


def run(worker_argv: list[str]) -> int:
    """Run the worker (`worker_argv` + `--fanotify-fd N`); restart it if it crashes."""
    become_subreaper()
    group = fanotify.init_group()
    os.set_inheritable(group, True)

    stopping = False
    worker: subprocess.Popen | None = None

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if worker is not None and worker.poll() is None:
            worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    backoff = _BACKOFF_FIRST
    group_args = ["--fanotify-fd", str(group)]
    while True:
        started = time.monotonic()
        worker = subprocess.Popen([*worker_argv, *group_args], pass_fds=(group,))
        # Every later worker inherits the marks, and blocked accesses, of the
        # one before: its containers were never left unmeasured.
        group_args = ["--fanotify-fd", str(group), "--fanotify-continued"]
        status = _wait_worker(worker.pid)

        if stopping or status == 0:
            os.close(group)
            return status
        if status == EXIT_CONFIG:
            os.close(group)
            return 1
        if time.monotonic() - started > _STABLE_AFTER:
            backoff = _BACKOFF_FIRST
        log.error(
            "cvtpm daemon worker (pid %d) died with status %d; restarting in %.1f s "
            "(pending accesses stay blocked meanwhile)",
            worker.pid,
            status,
            backoff,
        )
        time.sleep(backoff)
        backoff = min(backoff * 2, _BACKOFF_MAX)


def _wait_worker(pid: int) -> int:
    """Reap children until the worker exits; returns its exit status."""
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 1
        # Other children are adopted swtpm processes: reaping is all they need.
        if reaped == pid:
            return os.waitstatus_to_exitcode(status)
