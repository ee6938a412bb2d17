"""Supervision: notice a vTPM whose swtpm died, restart it, and say what was lost."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

from cvtpm.errors import CvtpmError
from cvtpm.vtpm.manager import StartReport, VtpmManager

log = logging.getLogger(__name__)

RestartHook = Callable[[StartReport], None]


class Supervisor:
    """Watches the swtpm of each named vTPM through a pidfd and restarts it on exit."""

    def __init__(self, manager: VtpmManager, on_restart: RestartHook | None = None):
        self.manager = manager
        self.on_restart = on_restart
        self._pidfds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()

    def watch(self, name: str, pid: int | None = None) -> None:
        """Start watching a running vTPM (again, after its pid changed)."""
        if pid is None:
            pid = self.manager.get(name).pid
        if pid is None:
            raise CvtpmError(f"vTPM {name!r} is not running; nothing to watch")
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # It died between the lookup and here: restart it right away.
            self._restart(name)
            return
        with self._lock:
            old = self._pidfds.pop(name, None)
            self._pidfds[name] = pidfd
        if old is not None:
            os.close(old)
        os.write(self._wake_w, b"w")

    def unwatch(self, name: str) -> None:
        """Stop watching, before an orderly stop or a delete."""
        with self._lock:
            pidfd = self._pidfds.pop(name, None)
        if pidfd is not None:
            os.close(pidfd)
        os.write(self._wake_w, b"u")

    def watched(self) -> list[str]:
        """The names being watched."""
        with self._lock:
            return sorted(self._pidfds)

    def run(self) -> None:
        """Watch until `stop()`; meant for a thread of the daemon."""
        while not self._stopping.is_set():
            with self._lock:
                by_fd = {fd: name for name, fd in self._pidfds.items()}
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd in by_fd:
                poller.register(fd, select.POLLIN)

            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    _drain(self._wake_r)
                elif fd in by_fd:
                    self._exited(by_fd[fd], fd)

    def stop(self) -> None:
        """End `run()` and release every pidfd."""
        self._stopping.set()
        os.write(self._wake_w, b"s")
        with self._lock:
            for fd in self._pidfds.values():
                os.close(fd)
            self._pidfds.clear()

    def _exited(self, name: str, pidfd: int) -> None:
        with self._lock:
            if self._pidfds.get(name) != pidfd:
                return
            del self._pidfds[name]
        os.close(pidfd)
        self._restart(name)

    def _restart(self, name: str) -> None:
        try:
            report = self.manager.start(name)
        except CvtpmError as exc:
            # Corrupt or missing state: the manager refused, and that refusal
            # is the right outcome; it is logged, never papered over.
            log.error("vTPM %s died and cannot be restarted: %s", name, exc.explain())
            return
        log.warning("vTPM %s: swtpm died; %s", name, report.describe())
        self.watch(name)
        if self.on_restart is not None:
            self.on_restart(report)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
