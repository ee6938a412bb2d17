"""Idle vTPMs give back their swtpm process and come back on first use.

A host may hold far more containers than are busy at once. A tracked vTPM that
nobody has used for `timeout` seconds (no command through its container's
filter, no measurement, no quote) is stopped in order: TPM2_Shutdown(STATE),
then swtpm saves its state and exits, so the vTPM costs a state file and no
memory. The next use starts it again from that state, PCRs included, before
the use goes on. The daemon keeps the container's filter socket open meanwhile,
so a container sees nothing but the latency of its first command.

Every use goes through `IdleReleaser.use(name)`, which counts the users of a
vTPM; a vTPM is released only with no user, and each release bumps the vTPM's
generation so that connections opened before it (`LeasedTpm`) reconnect.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cvtpm.errors import CvtpmError, StateError
from cvtpm.tpm.client import TpmClient
from cvtpm.vtpm.info import StartReport
from cvtpm.vtpm.manager import VtpmManager

log = logging.getLogger(__name__)

StartHook = Callable[[StartReport], None]
StopHook = Callable[[str], None]


@dataclass
class _Slot:
    """One tracked vTPM: who uses it now, when it was last used, if it runs."""

    last_used: float
    users: int = 0
    released: bool = False
    generation: int = 0
    # False once it came back without its state (PCRs reset), until released
    # again: see LeasedTpm.
    whole: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


class IdleReleaser:
    """Stops tracked vTPMs idle for `timeout` seconds and restarts them on use.

    `on_start` runs after a released vTPM came back (the daemon watches its new
    swtpm process); `on_stop` runs just before one is released (the daemon
    stops watching it, so that the exit is not taken for a crash).
    """

    def __init__(
        self,
        manager: VtpmManager,
        timeout: float,
        *,
        on_start: StartHook | None = None,
        on_stop: StopHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if timeout <= 0:
            raise ValueError(f"idle timeout must be positive, not {timeout}")
        self.manager = manager
        self.timeout = timeout
        self.on_start = on_start
        self.on_stop = on_stop
        self.clock = clock
        self._slots: dict[str, _Slot] = {}
        self._guard = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what is tracked ------------------------------------------------------

    def track(self, name: str) -> None:
        """Start counting the uses of a running vTPM; it is released when idle."""
        with self._guard:
            self._slots.setdefault(name, _Slot(last_used=self.clock()))

    def untrack(self, name: str) -> None:
        """Stop tracking; waits for a release or restart in progress to finish."""
        with self._guard:
            slot = self._slots.pop(name, None)
        if slot is not None:
            with slot.lock:
                pass

    def released(self) -> list[str]:
        """The tracked vTPMs whose swtpm is released now."""
        with self._guard:
            return sorted(n for n, s in self._slots.items() if s.released)

    # -- uses -----------------------------------------------------------------

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[int]:
        """Hold the vTPM running for the block; starts it if it was released.

        Yields the vTPM's generation, which changes with every release. An
        untracked name passes through (generation 0), so callers need not care.
        """
        slot = self._slot(name)
        if slot is None:
            yield 0
            return

        with slot.lock:
            if slot.released:
                self._restart(name, slot)
            slot.users += 1
            generation = slot.generation
        try:
            yield generation
        finally:
            with slot.lock:
                slot.users -= 1
                slot.last_used = self.clock()

    def touch(self, name: str) -> None:
        """Count the vTPM as used just now, without holding it."""
        slot = self._slot(name)
        if slot is not None:
            slot.last_used = self.clock()

    def came_back_whole(self, name: str) -> bool:
        """False if the vTPM's last start after a release lost its state."""
        slot = self._slot(name)
        return slot is None or slot.whole

    def client(self, name: str, tcti: str) -> LeasedTpm:
        """A TPM connection to the vTPM that survives its releases."""
        return LeasedTpm(self, name, tcti)

    # -- releasing ------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Release every tracked vTPM idle for `timeout` seconds; their names."""
        now = self.clock()
        with self._guard:
            idle = [
                (name, slot)
                for name, slot in self._slots.items()
                if not slot.released and now - slot.last_used >= self.timeout
            ]

        out = []
        for name, slot in idle:
            with slot.lock:
                # A use may have started or ended since the list was made.
                if slot.users or slot.released:
                    continue
                if self.clock() - slot.last_used < self.timeout:
                    continue
                if self._release(name, slot):
                    out.append(name)
        return out

    def start(self) -> None:
        """Sweep in a background thread, often enough to release near the timeout."""
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="cvtpm-idle", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """End the sweeping thread; released vTPMs stay released."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- helpers --------------------------------------------------------------

    def _slot(self, name: str) -> _Slot | None:
        with self._guard:
            return self._slots.get(name)

    def _run(self) -> None:
        interval = min(max(self.timeout / 4, 0.05), 30.0)
        while not self._stopping.wait(interval):
            try:
                self.sweep()
            except Exception:
                # The sweeper must outlive one bad vTPM; the next sweep retries.
                log.exception("idle sweep failed")

    def _release(self, name: str, slot: _Slot) -> bool:
        """Stop one vTPM in order (call with slot.lock held); False if it failed."""
        if self.on_stop is not None:
            self.on_stop(name)
        try:
            self.manager.stop(name, force=True, idle=True)
        except CvtpmError as exc:
            # It stays marked running; a use finds out whether it still works.
            log.error("vTPM %s: idle release failed: %s", name, exc.explain())
            return False
        slot.released = True
        slot.generation += 1
        log.info("vTPM %s: released after %.0f s idle", name, self.timeout)
        return True

    def _restart(self, name: str, slot: _Slot) -> None:
        """Start a released vTPM again (call with slot.lock held)."""
        report = self.manager.start(name)
        slot.released = False
        slot.whole = report.resumed
        if not report.resumed:
            # An orderly stop always resumes; anything else means its PCRs are
            # gone and a measured container's list is now ahead of PCR 10.
            log.warning("vTPM %s: came back from idle without its state", name)
        if self.on_start is not None:
            self.on_start(report)


class LeasedTpm:
    """A TpmClient-like connection that holds its vTPM running for each call.

    It reconnects when the vTPM was released and started again since the last
    call (its old socket is gone), so a holder such as the measurement agent
    never notices a release. If the vTPM came back without its state, its
    PCRs are reset and no longer what the holder extended them to: every
    call fails (StateError) until the holder opens a new connection, which
    the agent does after a failed extend, bringing PCR 10 up to its list
    first. Otherwise the extend that woke the vTPM would land on a reset
    PCR 10, which no replay of the list could then match.
    """

    def __init__(self, releaser: IdleReleaser, name: str, tcti: str):
        self._releaser = releaser
        self._name = name
        self._tcti = tcti
        self._tpm: TpmClient | None = None
        self._generation = -1
        self._lock = threading.Lock()

    def __getattr__(self, attr: str):
        method = getattr(TpmClient, attr, None)
        if not callable(method) or attr.startswith("_"):
            raise AttributeError(attr)

        def call(*args, **kwargs):
            with self._releaser.use(self._name) as generation, self._lock:
                if self._generation not in (-1, generation) and (
                    not self._releaser.came_back_whole(self._name)
                ):
                    raise StateError(
                        f"vTPM {self._name} came back from idle without its "
                        "state: its PCRs were reset; open a new connection"
                    )
                return getattr(self._connected(generation), attr)(*args, **kwargs)

        return call

    def close(self) -> None:
        """Close the connection, if one is open."""
        with self._lock:
            self._disconnect()

    def __enter__(self) -> LeasedTpm:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _connected(self, generation: int) -> TpmClient:
        if self._tpm is not None and self._generation == generation:
            return self._tpm
        self._disconnect()
        self._tpm = TpmClient(self._tcti)
        self._generation = generation
        return self._tpm

    def _disconnect(self) -> None:
        if self._tpm is not None:
            with contextlib.suppress(Exception):
                self._tpm.close()
        self._tpm = None
