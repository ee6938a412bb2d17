"""Idle release: a vTPM unused for its timeout stops in order and comes back on use."""

from __future__ import annotations

import threading

import pytest

from cvtpm.errors import StateError
from cvtpm.tpm.client import TpmClient
from cvtpm.vtpm import swtpm
from cvtpm.vtpm.idle import IdleReleaser

pytestmark = pytest.mark.swtpm


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def releaser(manager, clock):
    manager.create("app")
    started, stopped = [], []
    idle = IdleReleaser(
        manager,
        60,
        on_start=started.append,
        on_stop=stopped.append,
        clock=clock,
    )
    idle.track("app")
    idle.started, idle.stopped = started, stopped
    return idle


def test_idle_vtpm_is_released_and_resumes_with_its_pcrs(releaser, manager, clock):
    """After the timeout the swtpm exits (state "idle"); the next call through a
    leased connection starts it again with PCR 10 as it was."""
    tpm = releaser.client("app", manager.get("app").tcti)
    tpm.pcr_extend(10, {"sha256": b"\x11" * 32})
    before = tpm.pcr_read(10, ["sha256"])
    pid = manager.get("app").pid

    clock.now += 61
    assert releaser.sweep() == ["app"]

    assert not swtpm.is_running(pid)
    assert manager.get("app").state == "idle" and manager.get("app").pid is None
    assert releaser.released() == ["app"] and releaser.stopped == ["app"]

    after = tpm.pcr_read(10, ["sha256"])

    assert after == before
    assert manager.is_running("app") and manager.get("app").state == "running"
    assert [r.resumed for r in releaser.started] == [True]
    tpm.close()


def test_recent_use_keeps_the_vtpm_running(releaser, manager, clock):
    """A use inside the timeout postpones the release."""
    clock.now += 50
    releaser.touch("app")
    clock.now += 50

    assert releaser.sweep() == []
    assert manager.is_running("app")


def test_vtpm_in_use_is_never_released(releaser, manager, clock):
    """While a use holds the vTPM, however long, a sweep leaves it running."""
    with releaser.use("app"):
        clock.now += 1000
        assert releaser.sweep() == []
        assert manager.is_running("app")

    # Ending the use counts as using it.
    assert releaser.sweep() == []
    clock.now += 61
    assert releaser.sweep() == ["app"]


def test_concurrent_uses_wake_it_once(releaser, manager, clock):
    """Several threads using a released vTPM at once start one swtpm between them."""
    clock.now += 61
    releaser.sweep()
    barrier = threading.Barrier(4)
    pids = []

    def use():
        barrier.wait()
        with releaser.use("app"):
            pids.append(manager.get("app").pid)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(pids)) == 1 and None not in pids
    assert len(releaser.started) == 1


def test_untracked_names_pass_through(releaser, manager):
    """use() of a vTPM not tracked does nothing to it (generation 0)."""
    manager.create("other")
    with releaser.use("other") as generation:
        assert generation == 0
    releaser.untrack("app")
    releaser.sweep()
    assert manager.is_running("app")


def test_timeout_must_be_positive(manager):
    with pytest.raises(ValueError, match="must be positive"):
        IdleReleaser(manager, 0)


def test_a_vtpm_that_came_back_without_its_state_fails_old_connections(
    releaser, manager, clock, monkeypatch
):
    """Its PCRs were reset: a connection made before fails every call, so an
    extend cannot land on the reset PCR as if nothing happened; a new
    connection works (the agent's, which brings PCR 10 up to its list)."""
    tpm = releaser.client("app", manager.get("app").tcti)
    tpm.pcr_extend(10, {"sha256": b"\x11" * 32})
    clock.now += 61
    assert releaser.sweep() == ["app"]
    # As if its saved state were lost: its next start cannot resume.
    monkeypatch.setattr(TpmClient, "startup", lambda tpm: tpm.startup_clear() or False)

    with pytest.raises(StateError, match="came back from idle without its state"):
        tpm.pcr_extend(10, {"sha256": b"\x22" * 32})
    with pytest.raises(StateError):
        tpm.pcr_read(10, ["sha256"])

    assert [r.resumed for r in releaser.started] == [False]
    fresh = releaser.client("app", manager.get("app").tcti)
    assert fresh.pcr_read(10, ["sha256"]) == {"sha256": bytes(32)}
    fresh.close()
    tpm.close()
