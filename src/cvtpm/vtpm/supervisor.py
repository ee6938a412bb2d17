"""Supervision: notice a vTPM whose swtpm died, restart it, and say what was lost."""

from __future__ import annotations

import logging
from collections.abc import Callable

from cvtpm.errors import CvtpmError
from cvtpm.pidwatch import PidWatcher
from cvtpm.vtpm.info import StartReport
from cvtpm.vtpm.manager import VtpmManager

log = logging.getLogger(__name__)

RestartHook = Callable[[StartReport], None]


class Supervisor:
    """Watches the swtpm of each named vTPM through a pidfd and restarts it on exit."""

    def __init__(self, manager: VtpmManager, on_restart: RestartHook | None = None):
        self.manager = manager
        self.on_restart = on_restart
        self._watcher = PidWatcher(self._restart)

    def watch(self, name: str, pid: int | None = None) -> None:
        """Start watching a running vTPM (again, after its pid changed)."""
        if pid is None:
            pid = self.manager.get(name).pid
        if pid is None:
            raise CvtpmError(f"vTPM {name!r} is not running; nothing to watch")
        if not self._watcher.watch(name, pid):
            # It died between the lookup and here: restart it right away.
            self._restart(name)

    def unwatch(self, name: str) -> None:
        """Stop watching, before an orderly stop or a delete."""
        self._watcher.unwatch(name)

    def watched(self) -> list[str]:
        """The names being watched."""
        return self._watcher.watched()

    def run(self) -> None:
        """Watch until `stop()`; meant for a thread of the daemon."""
        self._watcher.run()

    def stop(self) -> None:
        """End `run()` and release every pidfd."""
        self._watcher.stop()

    def _restart(self, name: str) -> None:
        try:
            report = self.manager.start(name, unless_stopped=True)
        except CvtpmError as exc:
            # Corrupt or missing state: the manager refused, and that refusal
            # is the right outcome; it is logged, never papered over.
            log.error("vTPM %s died and cannot be restarted: %s", name, exc.explain())
            return
        if report is None:
            # `cvtpm vtpm stop --force`: the measurements of its container now
            # fail closed, as that command says, until it is started again.
            log.warning("vTPM %s was stopped; it is not restarted", name)
            return
        log.warning("vTPM %s: swtpm died; %s", name, report.describe())
        self.watch(name)
        if self.on_restart is not None:
            self.on_restart(report)
