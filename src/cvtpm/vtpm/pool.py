"""A pool of manufactured, running vTPMs: containers never wait for key generation."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from cvtpm.errors import CvtpmError, NotFoundError
from cvtpm.vtpm import swtpm
from cvtpm.vtpm.info import VtpmInfo
from cvtpm.vtpm.manager import VtpmManager

log = logging.getLogger(__name__)

# How long after a take the pool waits before making the next vTPM. A vTPM
# costs about 10 ms of CPU to make; made at once, it competes for two cores
# and the daemon's GIL with the start of the container that took one (the
# rest of its hook, runc, its first execs' measurements). In A/B runs of
# single starts on a host at rest, a start then took 1.49-1.58x runc alone,
# against 1.43-1.50x with this wait.
QUIET_AFTER_TAKE = 0.05


class VtpmPool:
    """Keeps `size` certified vTPMs ready; `take` names one for a container.

    The refill waits for a quiet moment (QUIET_AFTER_TAKE without a take),
    unless fewer than half its size are left: a burst of container starts is
    served from the pool first, and refilled while the pool can still cover
    the next.
    """

    def __init__(
        self, manager: VtpmManager, size: int, quiet: float = QUIET_AFTER_TAKE
    ):
        if size < 0:
            raise ValueError(f"pool size must not be negative, not {size}")
        self.manager = manager
        self.size = size
        self.quiet = quiet
        self._last_take = float("-inf")
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, name: str, ephemeral: bool = False) -> VtpmInfo:
        """A ready vTPM named `name`: from the pool if it has one, else made now."""
        info = self.manager.claim_pooled(name, ephemeral)
        self._last_take = time.monotonic()
        self._wanted.set()
        if info is not None:
            return info
        log.info("vTPM pool empty; manufacturing %s on demand", name)
        return self.manager.create(name, ephemeral=ephemeral)

    def fill(self, wait_for_quiet: bool = False) -> int:
        """Bring the pool up to its size; returns how many were made.

        At once, unless `wait_for_quiet` (the refill thread): each vTPM is
        then made only once no take came for `quiet` seconds, or at once while
        fewer than half the size are ready.
        """
        made = 0
        # Names and pids only: this runs after every take, and whole records
        # of the pool cost milliseconds of the daemon's time.
        running, stopped = 0, []
        for name, pid, state, vtpm_uuid in self.manager.registry.pooled_processes():
            # Only this thread makes pooled vTPMs, one at a time: one still
            # "creating" is what a crash left, its swtpm perhaps still running.
            if state == "creating":
                with contextlib.suppress(NotFoundError):
                    self.manager.discard_unfinished(name)
            elif swtpm.runs_on(pid, self.manager.uuid_paths(vtpm_uuid)):
                running += 1
            else:
                stopped.append(name)

        # After a host reboot or a daemon's restart, pooled vTPMs have no
        # process: as many are started as the pool's size wants (a running one
        # may be claimed meanwhile: it is then no longer the pool's), and the
        # rest deleted (not running, no container can claim them meanwhile).
        for name in stopped:
            if running >= self.size:
                log.info("dropping pooled vTPM %s: the pool holds %d", name, self.size)
                with contextlib.suppress(NotFoundError):
                    self.manager.delete(name)
                continue
            try:
                self.manager.start(name)
                running += 1
            except NotFoundError:
                continue
            except CvtpmError as exc:
                log.warning("dropping pooled vTPM %s: %s", name, exc.explain())
                with contextlib.suppress(NotFoundError):
                    self.manager.delete(name)
        while not self._stopping.is_set():
            ready = self.manager.pooled_count()
            if ready >= self.size:
                break
            if wait_for_quiet and 2 * ready >= self.size and self._wait_quiet():
                continue  # count again: takes may have come meanwhile
            self.manager.create("", pooled=True)
            made += 1
        return made

    def _wait_quiet(self) -> bool:
        """Wait until `quiet` seconds after the last take, until the next take
        (which may leave the pool below half), or until stop(); True if it
        waited at all, for the caller to count again."""
        left = self._last_take + self.quiet - time.monotonic()
        if left <= 0:
            return False
        # stop() sets _wanted too, so a wait never outlasts the pool.
        self._wanted.wait(left)
        self._wanted.clear()
        return True

    def start(self) -> None:
        """Refill in a background thread after takes (see the class)."""
        self._thread = threading.Thread(
            target=self._run, name="cvtpm-pool", daemon=True
        )
        self._wanted.set()
        self._thread.start()

    def stop(self) -> None:
        """Stop refilling; the pooled vTPMs keep running for the next daemon."""
        self._stopping.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join()

    def drain(self) -> None:
        """Delete every pooled vTPM."""
        for info in self.manager.pooled():
            self.manager.delete(info.name)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wanted.wait()
            self._wanted.clear()
            try:
                self.fill(wait_for_quiet=True)
            except CvtpmError as exc:
                log.error("cannot refill the vTPM pool: %s", exc.explain())
