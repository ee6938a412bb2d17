"""A running container whose vTPM is released while idle: every use brings it back."""

from __future__ import annotations

import subprocess
import time

import pytest

from cvtpm.attest.evidence import Evidence
from cvtpm.ima.replay import replay
from cvtpm.measure.journal import read_list
from cvtpm.server.host import Host
from cvtpm.tpm.client import TpmClient
from tests.support.host import hand_over, running_host
from tests.support.runc import Bundle, make_program, sha256_file

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]


@pytest.fixture
def host(paths):
    """A Host that releases vTPMs after an hour idle; the test moves its clock."""
    with running_host(paths, idle_timeout=3600) as h:
        yield h


def release(host: Host, name: str) -> None:
    """Make the vTPM look idle for two hours and sweep; its swtpm must be gone."""
    host.idle.clock = lambda: time.monotonic() + 7200
    host.idle.sweep()
    host.idle.clock = time.monotonic
    assert host.idle.released() == [name]
    assert host.manager.get(name).state == "idle"
    assert not host.manager.is_running(name)


def wait_for(host: Host, name: str, path: str) -> list:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = read_list(host.list_path(name).parent)
        if path in [e.path for e in listed]:
            return listed
        time.sleep(0.05)
    raise AssertionError(f"{path} was never measured in {name}")


def pcr10(host: Host, name: str) -> bytes:
    """PCR 10 read with tpm2-tools through the container's filtered socket."""
    sock = host.paths.run / "containers" / name / "tpm" / "tpm.sock"
    out = subprocess.run(
        ["tpm2_pcrread", "-T", f"swtpm:path={sock}", "sha256:10"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return bytes.fromhex(out.strip().rsplit("0x", 1)[1])


def test_released_vtpm_serves_socket_measurement_and_evidence(host, runc, short_tmp):
    """After each release: the container's socket, a new measurement and a quote
    each start the vTPM again, and PCR 10 still equals the list's replay."""
    bundle = Bundle(short_tmp / "b")
    make_program(bundle.rootfs, "/opt/p0", b"0")
    p1 = make_program(bundle.rootfs, "/opt/p1", b"1")
    bundle.set_script(
        "/opt/p0/true; while [ ! -e /go ]; do sleep 0.05; done; /opt/p1/true; sleep 30"
    )
    cid, pid = hand_over(host, runc, bundle, "quiet")
    runc.start(cid)
    try:
        listed = wait_for(host, "quiet", "/opt/p0/true")

        # 1. A command through the container's socket.
        release(host, "quiet")
        assert pcr10(host, "quiet") == replay(listed, "sha256")
        assert host.manager.get("quiet").state == "running"
        assert "quiet" in host.supervisor.watched()

        # 2. A measurement: the agent's extend wakes it.
        release(host, "quiet")
        (bundle.rootfs / "go").touch()
        listed = wait_for(host, "quiet", "/opt/p1/true")
        assert listed[-1].file_digest == sha256_file(p1)
        assert pcr10(host, "quiet") == replay(listed, "sha256")

        # 3. Evidence for a verifier.
        release(host, "quiet")
        evidence = Evidence.from_json(host.evidence("quiet", b"n" * 16))
        assert evidence.pcrs["sha256"][10] == replay(listed, "sha256")
        assert host.manager.get("quiet").restarts == 0
    finally:
        subprocess.run(["runc", "--root", str(runc.root), "kill", cid, "KILL"])


def test_a_vtpm_woken_without_its_state_is_brought_up_to_the_list(
    host, runc, short_tmp, monkeypatch
):
    """A release whose vTPM cannot resume (its PCRs come back reset): the
    measured access that wakes it fails closed, and PCR 10 is replayed from
    the list, that access's entry included, rather than extended from zero."""
    bundle = Bundle(short_tmp / "b")
    make_program(bundle.rootfs, "/opt/p0", b"0")
    make_program(bundle.rootfs, "/opt/p1", b"1")
    bundle.set_script(
        "/opt/p0/true; while [ ! -e /go ]; do sleep 0.05; done; /opt/p1/true; sleep 30"
    )
    cid, pid = hand_over(host, runc, bundle, "reset")
    runc.start(cid)
    try:
        wait_for(host, "reset", "/opt/p0/true")
        release(host, "reset")
        monkeypatch.setattr(
            TpmClient, "startup", lambda tpm: tpm.startup_clear() or False
        )

        (bundle.rootfs / "go").touch()
        listed = wait_for(host, "reset", "/opt/p1/true")

        deadline = time.monotonic() + 20
        while pcr10(host, "reset") != replay(listed, "sha256"):
            assert time.monotonic() < deadline, "PCR 10 never matched the list"
            time.sleep(0.05)
            listed = read_list(host.list_path("reset").parent)
        assert listed[-1].path == "/opt/p1/true"
        assert not host.idle.came_back_whole("reset")
    finally:
        subprocess.run(["runc", "--root", str(runc.root), "kill", cid, "KILL"])
