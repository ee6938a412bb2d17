"""The agent against the real kernel: runc containers, fanotify, swtpm."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.support.runc import make_program, sha256_file

from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import boot_aggregate
from cvtpm.ima.policy import parse_policy
from cvtpm.ima.replay import replay
from cvtpm.measure import eventfile, hashing
from cvtpm.measure.agent import DEFAULT_BUSY_POLL, Agent
from cvtpm.measure.container import ContainerSpec
from cvtpm.measure.journal import BINARY_NAME, read_list

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]


@pytest.fixture
def agent(policy, request):
    """A running agent, stopped after the test; a test's param sets its busy_poll."""
    a = Agent(policy, busy_poll=getattr(request, "param", DEFAULT_BUSY_POLL))
    a.start()
    yield a
    a.stop()


def start_measured(agent, runc, bundle, name, list_dir, extender, **spec):
    """Create a container, hand it to the agent and start it: (id, pid)."""
    cid, pid = runc.create(bundle)
    agent.add_container(
        ContainerSpec(name=name, pid=pid, list_dir=list_dir, extender=extender, **spec)
    )
    runc.start(cid)
    return cid, pid


def run_container(agent, runc, bundle, name, list_dir, extender, **spec):
    """Create a container, hand it to the agent, start it and wait for its end."""
    cid, _ = start_measured(agent, runc, bundle, name, list_dir, extender, **spec)
    runc.wait(cid)
    agent.remove_container(name)
    return read_list(list_dir)


def measured(entries) -> dict[str, list[bytes]]:
    """path -> file digests logged for it, in order (boot_aggregate left out)."""
    out: dict[str, list[bytes]] = {}
    for entry in entries[1:]:
        out.setdefault(entry.path, []).append(entry.file_digest)
    return out


@pytest.mark.parametrize(
    "agent", [0, 0.002], ids=["no-busy-poll", "busy-poll"], indirect=True
)
def test_each_distinct_program_is_measured_once(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """Every program a container runs is logged once, with sha256sum's digest.

    Polling for events or sleeping between them, the reader misses none.
    """
    bundle = bundle_factory()
    programs = [make_program(bundle.rootfs, f"/opt/p{i}", bytes([i])) for i in range(3)]
    bundle.set_script("/opt/p0/true; /opt/p1/true; /opt/p0/true; /opt/p2/true")
    tpm = swtpm_factory()

    with tpm.client() as client:
        entries = run_container(agent, runc, bundle, "c1", tmp_path / "l1", client)

    assert entries[0].path == "boot_aggregate"
    assert measured(entries) == {
        "/bin/busybox": [sha256_file(bundle.rootfs / "bin/busybox")],
        **{f"/opt/p{i}/true": [sha256_file(p)] for i, p in enumerate(programs)},
    }
    assert tpm.pcr10("sha256") == replay(entries, "sha256")
    assert tpm.pcr10("sha1") == replay(entries, "sha1")


def test_two_containers_of_one_image_keep_separate_lists(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """Two containers of the same rootfs get a list each; neither sees the other's."""
    bundle = bundle_factory()
    make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("/opt/a/true; sleep 0.3; /opt/a/true")
    tpm_a, tpm_b = swtpm_factory("a"), swtpm_factory("b")

    with tpm_a.client() as client_a, tpm_b.client() as client_b:
        cid_a, pid_a = runc.create(bundle)
        cid_b, pid_b = runc.create(bundle)
        agent.add_container(ContainerSpec("a", tmp_path / "la", client_a, pid=pid_a))
        agent.add_container(ContainerSpec("b", tmp_path / "lb", client_b, pid=pid_b))
        runc.start(cid_a)
        runc.start(cid_b)
        runc.wait(cid_a)
        runc.wait(cid_b)

    list_a, list_b = read_list(tmp_path / "la"), read_list(tmp_path / "lb")
    assert measured(list_a) == measured(list_b)
    # sleep is a link to busybox: one inode, logged once under its real path.
    assert set(measured(list_a)) == {"/bin/busybox", "/opt/a/true"}
    assert all(len(digests) == 1 for digests in measured(list_a).values())
    assert tpm_a.pcr10() == replay(list_a, "sha256")
    assert tpm_b.pcr10() == replay(list_b, "sha256")


def test_containers_of_one_rootfs_hash_each_file_version_once(
    agent, runc, bundle_factory, swtpm_factory, tmp_path, monkeypatch
):
    """A file another container had hashed is logged with that digest, unhashed.

    Changed, it is hashed again and logged with its new digest.
    """
    hashed = []
    real = hashing.hash_fd
    for module in (hashing, eventfile):
        monkeypatch.setattr(
            module, "hash_fd", lambda fd, alg: hashed.append(fd) or real(fd, alg)
        )
    bundle = bundle_factory()
    program = make_program(bundle.rootfs, "/opt/a", b"first")
    bundle.set_script("/opt/a/true")
    lists = []

    for name in ("a", "b", "c"):
        if name == "c":
            with open(program, "ab") as f:
                f.write(b"second")
        tpm = swtpm_factory(name)
        with tpm.client() as client:
            lists.append(
                run_container(agent, runc, bundle, name, tmp_path / name, client)
            )
        assert tpm.pcr10() == replay(lists[-1], "sha256")

    first = measured(lists[0])
    assert measured(lists[1]) == first
    assert measured(lists[2]) == {**first, "/opt/a/true": [sha256_file(program)]}
    # busybox and the program, then the program's second version.
    assert len(hashed) == 3


def test_a_changed_program_is_measured_again(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """Running a modified binary adds an entry with the new digest."""
    bundle = bundle_factory()
    program = make_program(bundle.rootfs, "/opt/a", b"first")
    bundle.set_script("/opt/a/true")
    tpm = swtpm_factory()
    spec = {"list_dir": tmp_path / "l", "extender": None}

    with tpm.client() as client:
        spec["extender"] = client
        run_container(agent, runc, bundle, "c", **spec)
        old = sha256_file(program)
        with open(program, "ab") as f:
            f.write(b"second")
        entries = run_container(agent, runc, bundle, "c", **spec)

    assert measured(entries)["/opt/a/true"] == [old, sha256_file(program)]
    assert tpm.pcr10() == replay(entries, "sha256")


def test_evmctl_accepts_the_list_against_the_vtpm(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """evmctl ima_measurement accepts the list against PCR 10 in sha1 and sha256."""
    bundle = bundle_factory()
    make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("/opt/a/true; ls / > /dev/null")
    tpm = swtpm_factory()
    with tpm.client() as client:
        run_container(agent, runc, bundle, "c", tmp_path / "l", client)

    for bank in ("sha1", "sha256"):
        pcrs = tmp_path / f"pcrs-{bank}"
        # evmctl's --pcrs file: one "PCR-NN: hex" line per PCR, from 00 on.
        lines = [f"PCR-{i:02d}: {v.hex()}\n" for i, v in enumerate(tpm.pcrs(bank))]
        pcrs.write_text("".join(lines))
        result = subprocess.run(
            [
                "evmctl", "ima_measurement",
                "--pcrs", f"{bank},{pcrs}", f"--verify-bank={bank}",
                str(tmp_path / "l" / BINARY_NAME),
            ],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Matched per TPM bank" in result.stdout + result.stderr


def test_nested_container_is_recorded_in_its_ancestor(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """A child's measurements land in the parent's list and vTPM too, not vice versa."""
    parent_bundle, child_bundle = bundle_factory(), bundle_factory()
    make_program(parent_bundle.rootfs, "/opt/parent", b"p")
    make_program(child_bundle.rootfs, "/opt/child", b"c")
    parent_bundle.set_script("sleep 1; /opt/parent/true")
    child_bundle.set_script("/opt/child/true")
    tpm_p, tpm_c = swtpm_factory("p"), swtpm_factory("c")

    with tpm_p.client() as client_p, tpm_c.client() as client_c:
        cid_p, pid_p = runc.create(parent_bundle)
        agent.add_container(ContainerSpec("p", tmp_path / "lp", client_p, pid=pid_p))
        runc.start(cid_p)
        run_container(
            agent, runc, child_bundle, "c", tmp_path / "lc", client_c, parent="p"
        )
        runc.wait(cid_p)

    parent, child = read_list(tmp_path / "lp"), read_list(tmp_path / "lc")
    assert "/opt/child/true" in measured(parent)
    assert "/opt/parent/true" in measured(parent)
    assert "/opt/parent/true" not in measured(child)
    assert tpm_p.pcr10() == replay(parent, "sha256")
    assert tpm_c.pcr10() == replay(child, "sha256")


def test_violations_open_writers_and_tomtou(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """Reading a file open for write, and writing a file measured and open for read,
    log open_writers and ToMToU entries (zero digests, 0xFF extends)."""
    bundle = bundle_factory()
    (bundle.rootfs / "data" / "w").write_text("w")
    (bundle.rootfs / "data" / "r").write_text("r")
    bundle.set_script(
        "exec 3>>/data/w; cat /data/w > /dev/null; exec 3>&-; "
        "exec 4</data/r; echo more >> /data/r; exec 4<&-"
    )
    tpm = swtpm_factory()
    with tpm.client() as client:
        entries = run_container(agent, runc, bundle, "c", tmp_path / "l", client)

    violations = [(e.path, e.is_violation) for e in entries if e.is_violation]
    assert ("/data/w", True) in violations
    assert ("/data/r", True) in violations
    assert len(violations) == 2
    assert tpm.pcr10() == replay(entries, "sha256")


def test_denies_when_the_vtpm_is_down_and_recovers(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """With the vTPM gone a new program is denied; after an swtpm restart (PCRs
    reset) the agent replays the list and allows again."""
    bundle = bundle_factory()
    make_program(bundle.rootfs, "/opt/a", b"a")
    make_program(bundle.rootfs, "/opt/b", b"b")
    bundle.set_script(
        "/opt/a/true; until [ -e /go ]; do sleep 0.05; done; "
        "/opt/b/true; echo $? > /result; rm /go; "
        "until [ -e /go ]; do sleep 0.05; done; /opt/b/true; echo $? >> /result"
    )
    tpm = swtpm_factory()
    list_dir = tmp_path / "l"
    cid, pid = runc.create(bundle)
    agent.add_container(ContainerSpec("c", list_dir, tpm.client, pid=pid))
    runc.start(cid)
    _wait_for(lambda: "/opt/a/true" in measured(read_list(list_dir)))

    tpm.stop()
    (bundle.rootfs / "go").touch()
    _wait_for(lambda: not (bundle.rootfs / "go").exists())
    tpm.start()
    (bundle.rootfs / "go").touch()
    runc.wait(cid)

    assert (bundle.rootfs / "result").read_text().split() != ["0", "0"]
    assert (bundle.rootfs / "result").read_text().split()[0] != "0"
    assert (bundle.rootfs / "result").read_text().split()[1] == "0"
    entries = read_list(list_dir)
    assert "/opt/b/true" in measured(entries)
    assert tpm.pcr10() == replay(entries, "sha256")
    agent.remove_container("c")


def _wait_for(condition, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_unknown_processes_are_allowed(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """A host process running a file through a container's root is allowed, unlogged."""
    bundle = bundle_factory()
    make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("sleep 2")
    tpm = swtpm_factory()
    with tpm.client() as client:
        cid, pid = runc.create(bundle)
        agent.add_container(ContainerSpec("c", tmp_path / "l", client, pid=pid))
        runc.start(cid)
        subprocess.run([f"/proc/{pid}/root/opt/a/true"], check=True)
        runc.wait(cid)
        agent.remove_container("c")
    assert "/opt/a/true" not in measured(read_list(tmp_path / "l"))


def test_a_program_whose_name_is_not_utf8(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """A program under /opt/<ff fe> is measured under its raw name, and the list on
    disk, `cvtpm log` and evmctl all agree with the vTPM."""
    raw = b"/opt/\xff\xfe/true"
    bundle = bundle_factory()
    program = make_program(bundle.rootfs, os.fsdecode(b"/opt/\xff\xfe"), b"ff")
    bundle.set_script('for f in /opt/*/true; do "$f"; echo $? > /data/rc; done')
    tpm = swtpm_factory()
    state = tmp_path / "state"
    list_dir = state / "lists" / "c"

    with tpm.client() as client:
        entries = run_container(agent, runc, bundle, "c", list_dir, client)

    # 1. Measured, allowed, and extended in step with the list.
    assert (bundle.rootfs / "data" / "rc").read_text() == "0\n"
    assert measured(entries)[os.fsdecode(raw)] == [sha256_file(program)]
    assert raw + b"\x00" in (list_dir / BINARY_NAME).read_bytes()
    assert b" " + raw + b"\n" in (list_dir / "ascii_runtime_measurements").read_bytes()
    assert tpm.pcr10("sha256") == replay(entries, "sha256")
    assert tpm.pcr10("sha1") == replay(entries, "sha1")

    # 2. `cvtpm log`, run as a user would: raw bytes in ascii, hex in JSON.
    def cvtpm_log(*args):
        return subprocess.run(
            [sys.executable, "-m", "cvtpm.cli.main", "--state-dir", str(state)]
            + ["log", "c", *args],
            capture_output=True,
            check=True,
        ).stdout

    text = cvtpm_log()
    assert text == (list_dir / "ascii_runtime_measurements").read_bytes()
    assert cvtpm_log("--format", "binary") == (list_dir / BINARY_NAME).read_bytes()
    (item,) = [e for e in json.loads(cvtpm_log("--json")) if "path_hex" in e]
    assert bytes.fromhex(item["path_hex"]) == raw
    assert item["path"] == "/opt/\ufffd\ufffd/true"

    # 3. An independent reader accepts the list against the vTPM.
    pcrs = tmp_path / "pcrs"
    lines = [f"PCR-{i:02d}: {v.hex()}\n" for i, v in enumerate(tpm.pcrs("sha256"))]
    pcrs.write_text("".join(lines))
    result = subprocess.run(
        ["evmctl", "ima_measurement", "--pcrs", f"sha256,{pcrs}"]
        + ["--verify-bank=sha256", str(list_dir / BINARY_NAME)],
        capture_output=True,
        text=True,
        errors="replace",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_list_left_torn_by_a_crash_at_its_first_entry(agent, swtpm_factory, tmp_path):
    """A crash mid-way through boot_aggregate leaves torn bytes and no entry: the
    container still starts, with the bytes set aside after reconcile."""
    tpm = swtpm_factory()
    list_dir = tmp_path / "l"
    list_dir.mkdir()
    torn = encode_binary(boot_aggregate(None))[:50]
    (list_dir / BINARY_NAME).write_bytes(torn)

    with tpm.client() as client:
        agent.add_container(
            ContainerSpec("c", list_dir, client, mnt_ns=1, mounts=[str(tmp_path)])
        )
        agent.remove_container("c")

    entries = read_list(list_dir)
    assert [e.path for e in entries] == ["boot_aggregate"]
    assert (list_dir / f"{BINARY_NAME}.torn-0").read_bytes() == torn
    assert tpm.pcr10() == replay(entries, "sha256")


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # An exec's own open is FILE_CHECK with MAY_EXEC (fs/exec.c opens it
        # with MAY_EXEC | MAY_OPEN; ima_file_check keeps MAY_EXEC).
        ("measure func=FILE_CHECK mask=MAY_EXEC", {"/bin/busybox", "/opt/run/true"}),
        # A read is MAY_READ; the exec's open is not a read.
        ("measure func=FILE_CHECK mask=^MAY_READ", {"/opt/read/true"}),
    ],
)
def test_an_exec_opens_its_file_with_may_exec(
    rule, expected, runc, bundle_factory, swtpm_factory, tmp_path
):
    """FILE_CHECK rules see the open of an executed file with MAY_EXEC, as the
    kernel's do, and a plain read with MAY_READ."""
    bundle = bundle_factory()
    make_program(bundle.rootfs, "/opt/run", b"run")
    make_program(bundle.rootfs, "/opt/read", b"read")
    bundle.set_script("/opt/run/true; cat /opt/read/true > /dev/null")
    agent = Agent(parse_policy(rule))
    agent.start()
    tpm = swtpm_factory()
    try:
        with tpm.client() as client:
            entries = run_container(agent, runc, bundle, "c", tmp_path / "l", client)
    finally:
        agent.stop()

    assert set(measured(entries)) == expected
    assert tpm.pcr10() == replay(entries, "sha256")


def _waiting_container_of_a_new_vtpm(
    agent, runc, bundle_factory, swtpm_factory, list_dir
):
    """Container "c", created but not started, measured with a new vTPM
    (returned) whose list is not begun yet."""
    bundle = bundle_factory()
    bundle.set_script("sleep 30")
    tpm = swtpm_factory()
    _, pid = runc.create(bundle)
    agent.add_container(
        ContainerSpec("c", list_dir, tpm.client, pid=pid, new_vtpm=True)
    )
    return tpm


def test_a_new_vtpm_list_begins_when_the_caller_says(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """For a new vTPM the list begins in a worker once begin_soon is said, not
    before: boot_aggregate arrives without any access by the container, once,
    and PCR 10 follows it."""
    list_dir = tmp_path / "l"
    tpm = _waiting_container_of_a_new_vtpm(
        agent, runc, bundle_factory, swtpm_factory, list_dir
    )
    assert read_list(list_dir) == []

    agent.begin_soon("c")
    _wait_for(lambda: len(read_list(list_dir)) == 1)
    agent.begin("c")

    assert read_list(list_dir) == [boot_aggregate(None)]
    assert tpm.pcr10() == replay([boot_aggregate(None)], "sha256")
    agent.remove_container("c")
    agent.begin("c")  # no longer measured: left alone
    agent.begin_soon("c")


def test_begin_soon_never_raises(agent, runc, bundle_factory, swtpm_factory, tmp_path):
    """Not measured, or the agent's workers gone (it is stopping): the list is
    left to its first measured access, and the caller's set-up stands."""
    list_dir = tmp_path / "l"
    _waiting_container_of_a_new_vtpm(
        agent, runc, bundle_factory, swtpm_factory, list_dir
    )

    agent.begin_soon("nosuch")
    agent._pool.shutdown()
    agent.begin_soon("c")

    assert read_list(list_dir) == []
    agent.begin("c")
    assert read_list(list_dir) == [boot_aggregate(None)]


def test_a_new_vtpm_list_begun_by_its_first_access(
    agent, runc, bundle_factory, swtpm_factory, tmp_path, caplog
):
    """If the worker cannot begin the list (its vTPM does not answer yet), the
    container's first measured access begins it: boot_aggregate comes first."""
    bundle = bundle_factory()
    make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("/opt/a/true")
    tpm = swtpm_factory()
    calls = []

    def connect():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionRefusedError("not yet")
        return tpm.client()

    list_dir = tmp_path / "l"
    cid, pid = runc.create(bundle)
    agent.add_container(ContainerSpec("c", list_dir, connect, pid=pid, new_vtpm=True))
    agent.begin_soon("c")
    _wait_for(lambda: "c: beginning its list: not yet" in caplog.text)
    assert read_list(list_dir) == []

    runc.start(cid)
    runc.wait(cid)
    agent.remove_container("c")

    entries = read_list(list_dir)
    assert entries[0] == boot_aggregate(None)
    assert [e.path for e in entries].count("boot_aggregate") == 1
    assert "/opt/a/true" in measured(entries)
    assert tpm.pcr10() == replay(entries, "sha256")
