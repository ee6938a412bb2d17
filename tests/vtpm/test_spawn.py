"""Starting swtpm by `spawn`: what its failures say, and what they leave.

Each test makes swtpm fail in one way, with a real swtpm, and checks both the
error a user sees and that no process, record or saved state is lost or left.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cvtpm.config import Paths
from cvtpm.errors import StateError, TpmError
from cvtpm.tpm.client import TpmClient
from cvtpm.vtpm import manager as manager_module
from cvtpm.vtpm import swtpm
from cvtpm.vtpm.manager import VtpmManager
from cvtpm.vtpm.pool import VtpmPool
from cvtpm.vtpm.registry import Registry, VtpmRecord

pytestmark = pytest.mark.swtpm


def test_a_bad_option_is_said_in_swtpm_s_own_words(manager, monkeypatch):
    """What swtpm prints before its log is open reaches the error, not its usage."""
    arguments = swtpm._command
    monkeypatch.setattr(swtpm, "_command", lambda *a: [*arguments(*a), "--bogus"])
    with pytest.raises(StateError) as err:
        manager.create("bogus")
    assert "unrecognized option '--bogus'" in str(err.value)
    assert "Usage" not in str(err.value)


@pytest.mark.parametrize(
    "sent, said",
    [
        (signal.SIGKILL, "was killed by SIGKILL while its vTPM"),
        (signal.SIGRTMIN + 5, f"was killed by signal {signal.SIGRTMIN + 5} while"),
        (signal.SIGTERM, r"exited \(status 0\) while its vTPM"),
    ],
    ids=["SIGKILL", "real-time signal", "SIGTERM"],
)
def test_a_swtpm_that_dies_while_being_manufactured_is_said_so(
    manager, monkeypatch, sent, said
):
    """Not "failed to start": killed, by which signal, or exited; nothing is left."""
    real = manager_module.manufacture

    def killed_halfway(tpm, *args):
        os.kill(list(swtpm._CHILDREN)[-1], sent)
        return real(tpm, *args)

    monkeypatch.setattr(manager_module, "manufacture", killed_halfway)
    with pytest.raises(StateError, match=said):
        manager.create("victim")
    assert manager.list() == []


def test_two_starts_at_once_leave_the_vtpm_reachable(manager, monkeypatch):
    """The second start waits for the first to be recorded, then finds it running."""
    manager.create("twice")
    manager.stop("twice")
    real_update = Registry.update
    first = threading.Event()

    def slow_update(self, name, **fields):
        if fields.get("state") == "running" and not first.is_set():
            first.set()
            time.sleep(0.5)  # the window another start used to slip into
        return real_update(self, name, **fields)

    monkeypatch.setattr(Registry, "update", slow_update)
    reports = []
    starter = threading.Thread(target=lambda: reports.append(manager.start("twice")))
    starter.start()
    assert first.wait(10)
    second = manager.start("twice")
    starter.join()

    assert second.was_running and second.pid == reports[0].pid
    with manager.client("twice") as tpm:
        assert tpm.pcr_read(10, ["sha256"])


def _start_failing_after_startup(manager, name: str, monkeypatch) -> None:
    """Start `name` with its first command after TPM2_Startup failing."""

    def refuse(self):
        raise TpmError("TPM2_HierarchyControl failed: injected")

    with monkeypatch.context() as patch:
        patch.setattr(TpmClient, "disable_platform_hierarchy", refuse)
        with pytest.raises(TpmError, match="injected"):
            manager.start(name)


def test_a_start_that_fails_after_startup_keeps_the_saved_state(manager, monkeypatch):
    """Stopped in order on the way out, so the next start still resumes."""
    info = manager.create("kept")
    with manager.client("kept") as tpm:
        tpm.pcr_extend(10, {"sha256": b"\xab" * 32})
        before = tpm.pcr_read(10, ["sha256"])
    manager.stop("kept")

    _start_failing_after_startup(manager, "kept", monkeypatch)
    assert not swtpm.is_running(manager.get("kept").pid)

    report = manager.start("kept")
    assert report.resumed and report.lost == []
    with TpmClient(info.tcti) as tpm:
        assert tpm.pcr_read(10, ["sha256"]) == before


def test_a_failed_start_after_a_clear_start_up_still_says_what_was_lost(
    manager, monkeypatch
):
    """After an unclean stop nothing resumes; a failed start must not save the
    reset as if it were an orderly stop, or the next start would hide it."""
    info = manager.create("reset")
    with manager.client("reset") as tpm:
        tpm.pcr_extend(10, {"sha256": b"\xab" * 32})
    swtpm.kill(info.pid)  # unclean: PCRs are lost

    _start_failing_after_startup(manager, "reset", monkeypatch)

    report = manager.start("reset")
    assert not report.resumed and "PCR values" in report.lost


def test_a_creating_record_whose_pid_is_another_vtpm_s_spares_that_swtpm(manager):
    """After a reboot a leftover pid may be reused: only a swtpm on the left-over
    vTPM's own state is killed with it."""
    other = manager.create("other")
    manager.registry.add(
        VtpmRecord(
            name="_pool-stale", uuid="stale", state="creating", pid=other.pid,
            banks="", ak_type="ecc", ephemeral=False, pooled=True,
        )
    )  # fmt: skip

    VtpmPool(manager, 0).fill()

    assert "_pool-stale" not in [n for n, *_ in manager.registry.pooled_processes()]
    assert swtpm.is_running(other.pid)
    with manager.client("other") as tpm:
        assert tpm.pcr_read(10, ["sha256"])


def _left_creating(manager, name: str, vtpm_uuid: str, pooled: bool):
    """What a crash in the middle of a creation leaves: a "creating" record
    and its swtpm still running on the state it was making; (paths, pid)."""
    leftover = manager.uuid_paths(vtpm_uuid)
    pid = swtpm.spawn(leftover, b"k" * 32, staged=True)
    manager.registry.add(
        VtpmRecord(
            name=name, uuid=vtpm_uuid, state="creating", pid=pid, banks="",
            ak_type="ecc", ephemeral=False, pooled=pooled,
        )
    )  # fmt: skip
    return leftover, pid


def test_a_pooled_vtpm_a_crash_left_creating_is_dropped_with_its_swtpm(manager):
    """Its swtpm still runs (the crash was the daemon's), on the state it was
    making in the run directory; the refill ends both."""
    leftover, pid = _left_creating(manager, "_pool-left", "left", pooled=True)
    assert swtpm.is_running(pid)

    VtpmPool(manager, 1).fill()

    assert not swtpm.is_running(pid)
    assert not leftover.state_dir.exists() and not leftover.run_dir.exists()
    assert [info.name for info in manager.pooled()] != ["_pool-left"]
    assert "_pool-left" not in [
        name for name, *_ in manager.registry.pooled_processes()
    ]


def test_a_relative_state_directory_names_the_same_place_for_swtpm(
    short_tmp, monkeypatch
):
    """swtpm runs in /, so it is handed absolute paths; its process is still
    recognised as this vTPM's however the directory is spelled."""
    monkeypatch.chdir(short_tmp)
    relative = VtpmManager(Paths(state=Path("st"), run=Path("rn")).ensure())
    info = relative.create("rel")
    try:
        assert relative.is_running("rel")
        spelled = VtpmManager(Paths(state=short_tmp / "st" / ".", run=short_tmp / "rn"))
        assert spelled.start("rel").was_running
        with relative.client("rel") as tpm:
            assert tpm.pcr_read(10, ["sha256"])
    finally:
        relative.delete("rel")
    assert not swtpm.is_running(info.pid)


def test_a_named_vtpm_a_crash_left_creating_says_so_and_can_be_deleted(manager):
    """Its maker would hold its lock: one found "creating" under it was cut
    short, and start and stop say how to remove it (stop does not mark it
    stopped); delete ends its swtpm too."""
    leftover, pid = _left_creating(manager, "half", "cut", pooled=False)

    with pytest.raises(StateError, match="'half' was never finished") as info:
        manager.start("half")
    assert "`cvtpm vtpm delete half` removes it" in str(info.value)
    with pytest.raises(StateError, match="'half' was never finished"):
        manager.stop("half")
    assert manager.registry.get("half").state == "creating"

    manager.delete("half")
    assert not swtpm.is_running(pid)
    assert not leftover.state_dir.exists()
