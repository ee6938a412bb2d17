"""The daemon's Host with real runc containers: vTPM, measurement, socket, evidence."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

from cvtpm.attest.evidence import Evidence
from cvtpm.errors import NotFoundError, StateError, UsageError
from cvtpm.ima.binary import parse_binary
from cvtpm.ima.entry import MEASUREMENT_GAP
from cvtpm.ima.replay import replay
from cvtpm.measure.journal import read_list
from cvtpm.pidwatch import process_identity
from cvtpm.server.host import Host
from cvtpm.server.request import ContainerRequest
from cvtpm.vtpm.manager import VtpmManager
from tests.support.host import hand_over, running_host, served_then_left
from tests.support.runc import Bundle, Runc, make_program, sha256_file

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]


@pytest.fixture
def host(paths):
    """A running Host (pool of two) on the test's own tree."""
    with running_host(paths, pool_size=2) as h:
        yield h


def run(host: Host, runc: Runc, bundle: Bundle, name: str, **kw) -> None:
    """Create the container, hand it to the host as a hook would, start, wait
    until it exited and the host, seeing it exit, tore it down."""
    cid, pid = hand_over(host, runc, bundle, name, **kw)
    runc.start(cid)
    runc.wait(cid)
    wait_torn_down(host, name)


def wait_torn_down(host: Host, name: str, timeout: float = 20) -> None:
    """Wait until the host no longer serves the container `name`."""
    deadline = time.monotonic() + timeout
    while name in [c["name"] for c in host.containers()]:
        assert time.monotonic() < deadline, f"{name} was not torn down"
        time.sleep(0.02)


def entries(host: Host, name: str):
    # read_list tolerates a record the agent is still appending.
    return read_list(host.list_path(name).parent)


def gaps(listed) -> int:
    """How many measurement gaps a list records."""
    return [e.path for e in listed].count(MEASUREMENT_GAP)


def pcr10(host: Host, name: str, bank: str = "sha256") -> bytes:
    """PCR 10 as a container sees it: through its filtered socket, with tpm2-tools."""
    sock = host.paths.run / "containers" / name / "tpm" / "tpm.sock"
    out = subprocess.run(
        ["tpm2_pcrread", "-T", f"swtpm:path={sock}", f"{bank}:10"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return bytes.fromhex(out.strip().rsplit("0x", 1)[1])


def test_container_gets_vtpm_list_and_socket(host, runc, short_tmp):
    """Each program the container runs is listed with its sha256, and PCR 10 read
    through the container's socket equals the replay of that list."""
    bundle = Bundle(short_tmp / "b")
    progs = [make_program(bundle.rootfs, f"/opt/p{i}", bytes([i])) for i in range(3)]
    bundle.set_script("/opt/p0/true; /opt/p1/true; /opt/p2/true; sleep 1")
    cid, pid = runc.create(bundle)
    answer = host.add_container(
        ContainerRequest(name="web", pid=pid, rootfs=str(bundle.rootfs))
    )
    runc.start(cid)
    deadline = time.monotonic() + 20
    while len(entries(host, "web")) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)

    listed = entries(host, "web")
    assert listed[0].path == "boot_aggregate"
    for i, prog in enumerate(progs):
        assert any(
            e.path == f"/opt/p{i}/true" and e.file_digest == sha256_file(prog)
            for e in listed
        )
    assert pcr10(host, "web") == replay(listed, "sha256")
    assert answer["tcti"].endswith("/containers/web/tpm/tpm.sock")
    assert answer["filter_socket"].endswith("/containers/web/tpm/tpm.sock")
    assert not (
        host.paths.run / "containers" / "web" / "tpm" / "container.json"
    ).exists()
    runc.wait(cid)


def test_programs_on_every_mount_of_the_container_are_measured(host, runc, short_tmp):
    """A program run from a tmpfs or from a bind-mounted volume is listed like
    one from the rootfs: each of the container's mounts is marked."""
    bundle = Bundle(short_tmp / "b")
    make_program(bundle.rootfs, "/opt/r", b"r")
    volume = short_tmp / "volume"
    volume.mkdir()
    make_program(volume, "/v", b"v")
    bundle._config["mounts"] += [
        {"destination": "/vol", "type": "bind", "source": str(volume),
         "options": ["rbind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev"]},
    ]  # fmt: skip
    bundle.set_script(
        "/opt/r/true; mkdir /scratch/s; cp /opt/r/true /scratch/s/true; "
        "echo x >> /scratch/s/true; /scratch/s/true && /vol/v/true"
    )

    run(host, runc, bundle, "mounts")

    listed = {e.path: e.file_digest for e in entries(host, "mounts")}
    assert listed["/opt/r/true"] == sha256_file(bundle.rootfs / "opt/r/true")
    assert listed["/vol/v/true"] == sha256_file(volume / "v/true")
    copied = (bundle.rootfs / "opt/r/true").read_bytes() + b"x\n"
    assert listed["/scratch/s/true"] == hashlib.sha256(copied).digest()
    assert not any(path.startswith(("/proc/", "/sys/")) for path in listed)


def test_evidence_quotes_pcr10_and_returns_the_list(host, runc, short_tmp):
    """Evidence carries a quote over the nonce, PCR 10 in every bank, and the list."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("sleep 30")
    cid, pid = hand_over(host, runc, bundle, "ev")
    runc.start(cid)
    deadline = time.monotonic() + 20
    while len(entries(host, "ev")) < 2:  # boot_aggregate, then sh itself
        assert time.monotonic() < deadline
        time.sleep(0.02)

    data = host.evidence("ev", b"n" * 16, since=0)

    evidence = Evidence.from_json(data)
    assert evidence.nonce == b"n" * 16
    assert set(evidence.pcrs) == {"sha1", "sha256", "sha384", "sha512"}
    assert parse_binary(evidence.entries) == entries(host, "ev")
    assert evidence.pcrs["sha256"][10] == replay(entries(host, "ev"), "sha256")


def test_evidence_of_a_container_not_yet_started(host, runc, short_tmp):
    """A new container's list is begun in the background; evidence asked before
    it ran anything still has boot_aggregate, once, and PCR 10 to match."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    hand_over(host, runc, bundle, "early")

    evidence = Evidence.from_json(host.evidence("early", b"e" * 16))

    listed = parse_binary(evidence.entries)
    assert [e.path for e in listed] == ["boot_aggregate"]
    assert evidence.pcrs["sha256"][10] == replay(listed, "sha256")


def test_restart_continues_the_same_vtpm_and_list(host, runc, short_tmp):
    """A stopped and restarted container keeps its EK, its PCR 10 and its list."""
    bundle = Bundle(short_tmp / "b")
    make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("/opt/a/true")
    run(host, runc, bundle, "app")
    first = host.manager.get("app")
    before = entries(host, "app")
    assert first.state == "stopped"

    make_program(bundle.rootfs, "/opt/b", b"b")
    bundle.set_script("/opt/b/true; sleep 30")
    cid, pid = hand_over(host, runc, bundle, "app")
    runc.start(cid)
    deadline = time.monotonic() + 20
    while "/opt/b/true" not in [e.path for e in entries(host, "app")]:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    again = host.manager.get("app")
    after = entries(host, "app")
    assert again.uuid == first.uuid and again.ek_cert_pem == first.ek_cert_pem
    assert after[: len(before)] == before and len(after) > len(before)
    assert sum(e.path == "boot_aggregate" for e in after) == 1
    assert pcr10(host, "app") == replay(after, "sha256")


def test_ephemeral_container_leaves_nothing(host, runc, short_tmp):
    """An ephemeral container's vTPM, state, list and sockets go when its process
    exits, without a poststop hook."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    cid, pid = hand_over(host, runc, bundle, "tmp", ephemeral=True)
    state_dir = host.manager.swtpm_paths("tmp").state_dir
    swtpm_pid = host.manager.get("tmp").pid

    runc.start(cid)
    runc.wait(cid)
    wait_torn_down(host, "tmp")

    with pytest.raises(NotFoundError):
        host.manager.get("tmp")
    with pytest.raises(NotFoundError):
        host.remove_container("tmp")
    assert not state_dir.exists()
    assert not (host.paths.lists / "tmp").exists()
    assert not (host.paths.run / "containers" / "tmp").exists()
    assert not os.path.exists(f"/proc/{swtpm_pid}")


def test_an_ephemeral_container_whose_vtpm_was_deleted_leaves_no_list(
    host, runc, short_tmp
):
    """If its vTPM was deleted by hand while it ran, the container's exit still
    removes its list, so the name can be run ephemeral again."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("sleep 0.5")
    cid, pid = hand_over(host, runc, bundle, "gone", ephemeral=True)
    host.manager.delete("gone", force=True)

    runc.start(cid)
    runc.wait(cid)
    wait_torn_down(host, "gone")

    assert not (host.paths.lists / "gone").exists()
    assert not (host.paths.run / "containers" / "gone").exists()
    hand_over(host, runc, bundle, "gone", ephemeral=True)
    assert host.manager.get("gone").state == "running"


def test_a_set_up_that_cannot_be_remembered_is_undone(host, runc, short_tmp):
    """If the container cannot be recorded for a later daemon, the start fails
    as a whole: not served, its new vTPM and list gone, and a retry works."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("sleep 5")
    save = host._save

    def failing_save(request):
        raise OSError(28, "No space left on device")

    host._save = failing_save
    cid, pid = runc.create(bundle)
    request = ContainerRequest(name="full", pid=pid, rootfs=str(bundle.rootfs))
    with pytest.raises(OSError, match="No space left"):
        host.add_container(request)

    assert "full" not in [c["name"] for c in host.containers()]
    assert "full" not in host.agent.containers()
    with pytest.raises(NotFoundError):
        host.manager.get("full")
    assert not (host.paths.lists / "full").exists()

    host._save = save
    host.add_container(request)
    assert "full" in [c["name"] for c in host.containers()]
    assert (host.paths.run / "containers" / "full" / "container.json").exists()


def test_a_running_ephemeral_container_is_taken_back_by_the_next_daemon(
    paths, runc, short_tmp
):
    """Its own vTPM and list do not make its re-adoption look like an ephemeral
    container taking another's name: it is served, then ends as ephemeral."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    cid, pid = served_then_left(paths, runc, bundle, "eph", ephemeral=True)

    with running_host(paths) as second:
        assert "eph" in [c["name"] for c in second.containers()]
        runc.start(cid)
        runc.wait(cid)
        wait_torn_down(second, "eph")
        with pytest.raises(NotFoundError):
            second.manager.get("eph")
        assert not (second.paths.lists / "eph").exists()


def test_a_record_whose_pid_another_process_took_is_a_container_that_ended(
    paths, runc, short_tmp
):
    """A container's pid, taken by another process while no daemon ran, is not
    the container: its vTPM is not held in use, and the next daemon tears the
    container down as ended instead of adopting the stranger."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    served_then_left(paths, runc, bundle, "eph", ephemeral=True)
    saved = paths.run / "containers" / "eph" / "container.json"
    record = json.loads(saved.read_text())
    assert record["started"]

    stranger = subprocess.Popen(["sleep", "30"])
    try:
        saved.write_text(json.dumps({**record, "pid": stranger.pid}))
        assert VtpmManager(paths).container_using("eph") is None

        with running_host(paths) as second:
            assert "eph" not in [c["name"] for c in second.containers()]
            with pytest.raises(NotFoundError):
                second.manager.get("eph")
            assert not (paths.lists / "eph").exists()
            assert not saved.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_a_record_from_before_start_times_is_taken_back_and_gains_one(
    paths, runc, short_tmp
):
    """A record with no start time (an older daemon's) trusts its pid, for the
    manager as for the next daemon, which writes the start time it lacked."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("sleep 30")
    cid, pid = served_then_left(paths, runc, bundle, "old")
    saved = paths.run / "containers" / "old" / "container.json"
    record = json.loads(saved.read_text())
    del record["started"]
    saved.write_text(json.dumps(record))
    assert VtpmManager(paths).container_using("old") == pid

    with running_host(paths) as host:
        assert "old" in [c["name"] for c in host.containers()]
        assert json.loads(saved.read_text())["started"] == process_identity(pid)
        subprocess.run(["runc", "--root", str(runc.root), "kill", cid, "KILL"])


def test_a_container_a_daemon_could_not_take_back_is_left_for_the_next(
    paths, runc, short_tmp, caplog
):
    """A re-adoption that fails (here: its record cannot be rewritten) keeps the
    record of the running container, and the next daemon takes it back; a
    record that does not parse is said and skipped."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("sleep 30")
    served_then_left(paths, runc, bundle, "kept")
    saved = paths.run / "containers" / "kept" / "container.json"
    garbled = paths.run / "containers" / "garbled" / "container.json"
    garbled.parent.mkdir()
    garbled.write_text('{"name": "garbled", "pid"')

    second = Host(paths, host_pcrs=None)

    def failing_save(request):
        raise OSError(28, "No space left on device")

    second._save = failing_save
    second.start()
    try:
        assert "kept" not in [c["name"] for c in second.containers()]
        assert "cannot re-adopt kept: [Errno 28] No space left" in caplog.text
        assert f"cannot re-adopt the container saved in {garbled}" in caplog.text
    finally:
        second.stop()
    assert saved.exists()
    # It ran unmeasured, and its list says so, whoever continues it.
    assert gaps(read_list(paths.lists / "kept")) == 1

    with running_host(paths) as third:
        assert "kept" in [c["name"] for c in third.containers()]
        assert gaps(entries(third, "kept")) == 2
        assert pcr10(third, "kept") == replay(entries(third, "kept"), "sha256")


def test_a_container_that_ended_unserved_leaves_a_gap_in_its_list(
    paths, runc, short_tmp
):
    """One that ran and ended while no daemon ran keeps its vTPM and list, and
    the list records the gap: the next container of its name continues a list
    that says something ran unmeasured, and PCR 10 follows it."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    cid, pid = served_then_left(paths, runc, bundle, "left")
    runc.start(cid)
    runc.wait(cid)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # adopted by this process, the daemon's subreaper

    with running_host(paths) as host:
        assert "left" not in [c["name"] for c in host.containers()]
        assert host.manager.get("left").state == "stopped"
        assert entries(host, "left")[-1].path == MEASUREMENT_GAP
        # Its vTPM still ran: the gap is in PCR 10 already, as a verifier
        # attesting it now must see.
        assert host.manager.start("left").resumed
        with host.manager.client("left") as tpm:
            pcr = tpm.pcr_read(10, ["sha256"])["sha256"]
        assert pcr == replay(entries(host, "left"), "sha256")
        host.manager.stop("left")

        bundle.set_script("sleep 30")
        cid, _ = hand_over(host, runc, bundle, "left")
        assert gaps(entries(host, "left")) == 1
        assert pcr10(host, "left") == replay(entries(host, "left"), "sha256")
        subprocess.run(["runc", "--root", str(runc.root), "kill", cid, "KILL"])


def test_an_ephemeral_container_that_ended_unserved_leaves_nothing(
    paths, runc, short_tmp
):
    """One that ends while no daemon runs loses its vTPM and list at the next
    daemon's start, as at its exit, so its name can be run ephemeral again."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    cid, pid = served_then_left(paths, runc, bundle, "gone", ephemeral=True)
    runc.start(cid)
    runc.wait(cid)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # adopted by this process, the daemon's subreaper

    with running_host(paths) as host:
        with pytest.raises(NotFoundError):
            host.manager.get("gone")
        assert not (host.paths.lists / "gone").exists()
        assert not (host.paths.run / "containers" / "gone").exists()
        hand_over(host, runc, bundle, "gone", ephemeral=True)


def test_killed_swtpm_is_restarted_and_pcr10_replayed(host, runc, short_tmp):
    """kill -9 of a container's swtpm: the daemon restarts it and PCR 10 again
    equals the replay of the list, without waiting for the next exec."""
    bundle = Bundle(short_tmp / "b")
    make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("/opt/a/true; sleep 30")
    cid, pid = hand_over(host, runc, bundle, "hurt")
    runc.start(cid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "/opt/a/true" in [e.path for e in entries(host, "hurt")]:
            break
        time.sleep(0.05)
    # sh (busybox), then /opt/a/true; `sleep` is busybox again, already measured.
    assert [e.path for e in entries(host, "hurt")][-1] == "/opt/a/true"
    expected = replay(entries(host, "hurt"), "sha256")
    old = host.manager.get("hurt").pid

    os.kill(old, 9)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = host.manager.get("hurt")
        if info.pid not in (None, old) and host.manager.is_running("hurt"):
            try:
                if pcr10(host, "hurt") == expected:
                    break
            except subprocess.CalledProcessError:
                pass
        time.sleep(0.05)
    assert pcr10(host, "hurt") == expected
    assert host.manager.get("hurt").restarts == 1
    subprocess.run(["runc", "--root", str(runc.root), "kill", cid, "KILL"])


@pytest.mark.parametrize(
    ("request_kw", "error", "message"),
    [
        ({"pid": 1}, UsageError, "pid must be a process id"),
        ({"rootfs": "relative/path"}, UsageError, "absolute path"),
        ({"expose": "carrier-pigeon"}, UsageError, "expose must be"),
    ],
)
def test_bad_requests_are_refused_clearly(host, request_kw, error, message):
    """Malformed hook requests are usage errors and create nothing."""
    fields = {"name": "bad", "pid": os.getpid(), "rootfs": "/nonexistent"} | request_kw

    with pytest.raises(error, match=message):
        host.add_container(ContainerRequest(**fields))
    assert host.manager.list() == []


def test_adding_twice_and_removing_unknown_are_errors(host, runc, short_tmp):
    """A second add of a running container and removal of an unknown one fail."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("sleep 5")
    cid, pid = runc.create(bundle)
    request = ContainerRequest(name="once", pid=pid, rootfs=str(bundle.rootfs))
    host.add_container(request)

    with pytest.raises(StateError, match="already set up"):
        host.add_container(request)
    with pytest.raises(NotFoundError):
        host.remove_container("never")


def test_a_restart_before_the_exit_is_handled_is_served(host, runc, short_tmp):
    """A container started again under its name while the host has not yet
    handled the old process's exit gets its vTPM: the old one is torn down first."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    cid, pid = hand_over(host, runc, bundle, "again")
    host._exits.unwatch("again")  # as if its exit were still in the queue
    runc.start(cid)
    runc.wait(cid)
    assert "again" in [c["name"] for c in host.containers()]

    bundle.set_script("sleep 30")
    cid, pid = hand_over(host, runc, bundle, "again")
    assert [c["pid"] for c in host.containers() if c["name"] == "again"] == [pid]


def test_an_exit_seen_late_leaves_a_newer_container_alone(host, runc, short_tmp):
    """An exit handled after a container of the same name started again (its
    process alive) does not tear that newer container down."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("sleep 30")
    cid, pid = hand_over(host, runc, bundle, "late")

    host._container_exited("late")  # the old process's exit, handled only now

    assert [c["pid"] for c in host.containers() if c["name"] == "late"] == [pid]
    assert host.manager.get("late").state == "running"
    subprocess.run(["runc", "--root", str(runc.root), "kill", cid, "KILL"])


def test_a_vtpm_stopped_on_purpose_stays_stopped(host, runc, short_tmp):
    """`vtpm stop --force` of a container's vTPM is not undone by the supervisor,
    and the container's next measured exec fails closed."""
    bundle = Bundle(short_tmp / "b")
    make_program(bundle.rootfs, "/opt/late", b"late")
    # `echo >` is the shell's own: /data/up exists once the shell runs.
    bundle.set_script(
        "echo up > /data/up; sleep 3; /opt/late/true; echo $? > /data/rc; sleep 30"
    )
    cid, pid = hand_over(host, runc, bundle, "held")
    runc.start(cid)
    deadline = time.monotonic() + 20
    while not (bundle.rootfs / "data" / "up").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)

    host.manager.stop("held", force=True)
    while not (bundle.rootfs / "data" / "rc").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not host.manager.is_running("held")
    assert (bundle.rootfs / "data" / "rc").read_text().strip() != "0"


def test_a_new_vtpm_does_not_inherit_an_old_list(host, runc, short_tmp):
    """A list left by a deleted vTPM is kept aside; the new vTPM starts afresh."""
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    run(host, runc, bundle, "heir")
    old = entries(host, "heir")
    host.manager.delete("heir")

    run(host, runc, bundle, "heir")
    fresh = entries(host, "heir")
    assert fresh[0].path == "boot_aggregate" and len(fresh) == len(old)
    (kept,) = (host.paths.lists / ".retired").iterdir()
    assert kept.name.startswith("heir.")


def test_a_teardown_holds_up_only_a_start_of_the_same_name(host, runc, short_tmp):
    """While a container is torn down, others start; the same name waits for it."""
    gate = threading.Event()
    tearing = threading.Event()
    teardown = host._teardown

    def slow_teardown(request, *args, **kwargs):
        if request.name == "slow":
            tearing.set()
            assert gate.wait(30)
        return teardown(request, *args, **kwargs)

    host._teardown = slow_teardown
    bundle = Bundle(short_tmp / "b")
    bundle.set_script("true")
    cid, pid = hand_over(host, runc, bundle, "slow")
    first = host.manager.get("slow")
    runc.start(cid)
    runc.wait(cid)
    assert tearing.wait(20)

    # Another container is set up while "slow" is still being torn down.
    other = Bundle(short_tmp / "o")
    other.set_script("sleep 30")
    _, other_pid = runc.create(other)
    host.add_container(
        ContainerRequest(name="other", pid=other_pid, rootfs=str(other.rootfs))
    )
    assert not gate.is_set()

    # Until its teardown ends, "slow" is listed, and a request to tear it
    # down waits for that teardown (`cvtpm run` relies on both).
    assert "slow" in [c["name"] for c in host.containers()]
    removal = []

    def remove():
        try:
            host.remove_container("slow")
        except NotFoundError as exc:
            removal.append(exc)

    remover = threading.Thread(target=remove)
    remover.start()

    # "slow" again: its start waits until the teardown has stopped its vTPM.
    bundle.set_script("sleep 30")
    _, again_pid = runc.create(bundle)
    outcome = []
    starter = threading.Thread(
        target=lambda: outcome.append(
            host.add_container(
                ContainerRequest(name="slow", pid=again_pid, rootfs=str(bundle.rootfs))
            )
        )
    )
    starter.start()
    starter.join(0.5)
    assert starter.is_alive() and not outcome
    assert remover.is_alive() and not removal
    gate.set()
    starter.join(30)
    remover.join(30)
    assert len(removal) == 1  # found nothing left to tear down
    assert outcome and outcome[0]["name"] == "slow"
    assert host.manager.get("slow").uuid == first.uuid
    assert host.manager.get("slow").state == "running"
