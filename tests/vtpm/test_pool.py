"""The pool of ready vTPMs: taking, refilling, and surviving a reboot."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from cvtpm.errors import StateError
from cvtpm.vtpm.pool import VtpmPool

pytestmark = pytest.mark.swtpm


def test_take_names_a_ready_vtpm_without_manufacturing(manager):
    """A taken vTPM is the pooled one, renamed: same UUID, same running swtpm."""
    pool = VtpmPool(manager, size=2)
    assert pool.fill() == 2
    pooled = {i.uuid: i for i in manager.pooled()}

    info = pool.take("web")

    assert info.uuid in pooled and info.pid == pooled[info.uuid].pid
    assert info.name == "web" and info.state == "running"
    assert [i.name for i in manager.list()] == ["web"]
    assert len(manager.pooled()) == 1
    out = subprocess.run(
        ["tpm2_nvread", "-T", info.tcti, "0x01c0000a"], capture_output=True, check=True
    ).stdout
    assert out.startswith(b"\x30\x82")  # a DER certificate


def test_empty_pool_manufactures_on_demand(manager):
    """With nothing pooled, take() still returns a ready vTPM."""
    info = VtpmPool(manager, size=0).take("late")

    assert info.name == "late" and manager.is_running("late")


def test_background_refill_after_take(manager):
    """The pool thread makes a new vTPM when one is taken."""
    pool = VtpmPool(manager, size=1)
    pool.fill()
    pool.start()
    try:
        pool.take("first")
        deadline = time.monotonic() + 20
        while len(manager.pooled()) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pool.stop()

    assert len(manager.pooled()) == 1
    assert manager.get("first").uuid not in {i.uuid for i in manager.pooled()}


def _pooled_after(manager, seconds: float) -> int:
    """How many vTPMs are pooled once `seconds` have passed (time for the
    refill thread to make several, were it to make any)."""
    time.sleep(seconds)
    return len(manager.pooled())


def test_refill_waits_for_a_quiet_moment(manager):
    """A take leaves the pool one short while takes keep coming: the next
    vTPM is made after `quiet` seconds without one, not during a start."""
    pool = VtpmPool(manager, size=2, quiet=60)
    pool.fill()
    pool.start()
    try:
        pool.take("first")
        assert _pooled_after(manager, 1.0) == 1
    finally:
        pool.stop()


def test_refill_below_half_the_pool_is_at_once(manager):
    """Emptied, the pool refills at once up to half its size, and no further
    until things are quiet."""
    pool = VtpmPool(manager, size=2, quiet=60)
    pool.fill()
    pool.start()
    try:
        pool.take("first")
        pool.take("second")
        deadline = time.monotonic() + 20
        while not manager.pooled() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pooled_after(manager, 1.0) == 1
    finally:
        pool.stop()


def test_a_pool_of_one_refills_at_once(manager):
    """Emptied, a pool of one has fewer than half its size left: no waiting."""
    pool = VtpmPool(manager, size=1, quiet=60)
    pool.fill()
    pool.start()
    try:
        pool.take("first")
        deadline = time.monotonic() + 20
        while not manager.pooled() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(manager.pooled()) == 1
    finally:
        pool.stop()


def test_concurrent_takes_get_different_vtpms(manager):
    """Eight containers taking at once from a pool of eight get eight vTPMs."""
    pool = VtpmPool(manager, size=8)
    pool.fill()
    taken = []

    def take(i):
        taken.append(pool.take(f"c{i}").uuid)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(taken)) == 8
    assert manager.pooled() == []


def test_taken_name_is_refused(manager):
    """Taking a name that exists is a clear error and leaves the pool intact."""
    pool = VtpmPool(manager, size=1)
    pool.fill()
    pool.take("dup")

    pool.fill()
    with pytest.raises(StateError, match="already exists"):
        pool.take("dup")
    assert len(manager.pooled()) == 1


def test_fill_restarts_pooled_vtpms_whose_process_is_gone(manager):
    """After a reboot (processes gone), fill() brings pooled vTPMs back up."""
    pool = VtpmPool(manager, size=1)
    pool.fill()
    (before,) = manager.pooled()
    os.kill(before.pid, 9)
    deadline = time.monotonic() + 5
    while manager.is_running(before.name) and time.monotonic() < deadline:
        time.sleep(0.01)

    assert pool.fill() == 0

    (after,) = manager.pooled()
    assert after.uuid == before.uuid and manager.is_running(after.name)


def test_a_smaller_pool_drops_the_stopped_vtpms_it_does_not_want(manager):
    """A daemon started with a smaller --pool than the last one starts only
    as many of the pooled vTPMs its predecessor stopped as it holds, and
    deletes the others rather than keeping their swtpm running."""
    VtpmPool(manager, size=3).fill()
    for info in manager.pooled():
        manager.stop(info.name)  # what a daemon's stop does

    assert VtpmPool(manager, size=1).fill() == 0

    (kept,) = manager.pooled()
    assert manager.is_running(kept.name)
    assert len(list(manager.paths.vtpms.iterdir())) == 1
