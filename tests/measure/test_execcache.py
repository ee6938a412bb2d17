"""The agent's exec cache against the real kernel: runc containers, fanotify, swtpm.

tests/measure/test_execcache_reader.py tests the reader's table and parsing.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from tests.measure.test_agent import measured, run_container, start_measured
from tests.support.runc import make_program, sha256_file

from cvtpm.ima.policy import parse_policy
from cvtpm.ima.replay import replay
from cvtpm.measure.agent import Agent
from cvtpm.measure.journal import read_list

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]


@pytest.fixture
def agent(policy):
    a = Agent(policy)
    a.start()
    yield a
    a.stop()


def test_repeated_execs_are_answered_by_the_reader(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """The first exec is measured, the second judged, the rest answered in C."""
    bundle = bundle_factory()
    program = make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("; ".join(["/opt/a/true"] * 5))
    tpm = swtpm_factory()

    with tpm.client() as client:
        entries = run_container(agent, runc, bundle, "c", tmp_path / "l", client)

    assert measured(entries) == {
        "/bin/busybox": [sha256_file(bundle.rootfs / "bin/busybox")],
        "/opt/a/true": [sha256_file(program)],
    }
    assert agent._exec_cache.answered == 3
    assert tpm.pcr10() == replay(entries, "sha256")


def test_a_program_changed_between_execs_is_measured_again(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """A version the reader allowed does not let the changed file through."""
    bundle = bundle_factory()
    program = make_program(bundle.rootfs, "/opt/a", b"a")
    old = sha256_file(program)
    bundle.set_script(
        "/opt/a/true; /opt/a/true; /opt/a/true; echo changed >> /opt/a/true; "
        "/opt/a/true; /opt/a/true; /opt/a/true"
    )
    tpm = swtpm_factory()

    with tpm.client() as client:
        entries = run_container(agent, runc, bundle, "c", tmp_path / "l", client)

    assert measured(entries)["/opt/a/true"] == [old, sha256_file(program)]
    assert old != sha256_file(program)
    # The third exec of each version.
    assert agent._exec_cache.answered == 2
    assert tpm.pcr10() == replay(entries, "sha256")


def test_a_policy_that_measures_exec_opens_keeps_every_exec_with_the_agent(
    runc, bundle_factory, swtpm_factory, tmp_path
):
    """When an exec's open (FILE_CHECK, MAY_EXEC) may be measured, no exec is
    answered without the agent judging it."""
    agent = Agent(parse_policy("measure func=FILE_CHECK mask=MAY_EXEC\n"))
    agent.start()
    bundle = bundle_factory()
    program = make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("; ".join(["/opt/a/true"] * 4))
    tpm = swtpm_factory()
    try:
        with tpm.client() as client:
            entries = run_container(agent, runc, bundle, "c", tmp_path / "l", client)
    finally:
        agent.stop()

    assert measured(entries)["/opt/a/true"] == [sha256_file(program)]
    assert agent._exec_cache.answered == 0


def test_a_container_no_longer_measured_leaves_nothing_allowed(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """Its mount namespace's number may come back: what it allowed is forgotten."""
    bundle = bundle_factory()
    make_program(bundle.rootfs, "/opt/a", b"a")
    bundle.set_script("/opt/a/true; /opt/a/true; /opt/a/true")
    tpm = swtpm_factory()

    with tpm.client() as client:
        cid, _ = start_measured(agent, runc, bundle, "c", tmp_path / "l", client)
        runc.wait(cid)
        allowed = len(agent._exec_cache)
        agent.remove_container("c")

    # /opt/a/true's second exec; sh is busybox, executed once.
    assert allowed == 1
    assert len(agent._exec_cache) == 0
    assert "/opt/a/true" in measured(read_list(tmp_path / "l"))


def test_a_container_sharing_pid_namespaces_has_its_execs_judged(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """A container in another's pid namespace can run that one's programs
    through /proc/1/root; each run is measured into its own list, never
    answered on the strength of the other's."""
    first, second = bundle_factory(), bundle_factory()
    program = make_program(first.rootfs, "/opt/a", b"a")
    first.set_script("/opt/a/true; /opt/a/true; /opt/a/true; touch /data/ran; sleep 5")
    second.set_script("/proc/1/root/opt/a/true; /proc/1/root/opt/a/true")
    tpm_a, tpm_b = swtpm_factory("a"), swtpm_factory("b")

    with tpm_a.client() as client_a, tpm_b.client() as client_b:
        cid_a, pid_a = start_measured(
            agent, runc, first, "a", tmp_path / "la", client_a
        )
        wait_for(first.rootfs / "data/ran")
        answered = agent._exec_cache.answered

        second.join_pid_namespace(pid_a)
        cid_b, _ = start_measured(agent, runc, second, "b", tmp_path / "lb", client_b)
        runc.wait(cid_b)
        agent.remove_container("b")
        subprocess.run(["runc", "--root", str(runc.root), "kill", cid_a, "KILL"])
        runc.wait(cid_a)
        agent.remove_container("a")

    assert answered == 1  # the first container's third exec, before the second
    assert agent._exec_cache.answered == answered
    listed_b = measured(read_list(tmp_path / "lb"))
    assert [sha256_file(program)] in listed_b.values()
    assert tpm_b.pcr10() == replay(read_list(tmp_path / "lb"), "sha256")


def test_execs_of_another_containers_files_go_to_the_executing_threads_list(
    agent, runc, bundle_factory, swtpm_factory, tmp_path
):
    """A container with the host's /proc runs a program in another's root:
    each exec is its own list's, and what it ran lets none of the other's
    execs through."""
    victim, prober = bundle_factory(), bundle_factory()
    program = make_program(victim.rootfs, "/opt/x", b"x")
    victim.set_script(
        "touch /data/up; while [ ! -e /data/go ]; do sleep 0.05; done; "
        "/opt/x/true; touch /data/done; sleep 5"
    )
    tpm_a, tpm_b = swtpm_factory("a"), swtpm_factory("b")

    with tpm_a.client() as client_a, tpm_b.client() as client_b:
        cid_a, pid_a = start_measured(
            agent, runc, victim, "a", tmp_path / "la", client_a
        )
        wait_for(victim.rootfs / "data/up")

        theirs = f"/hostproc/{pid_a}/root"
        prober.set_script(
            f"{theirs}/opt/x/true; {theirs}/opt/x/true; {theirs}/opt/x/true; "
            f"touch {theirs}/data/go"
        )
        prober.add_mount("/hostproc", "/proc")
        cid_b, _ = start_measured(agent, runc, prober, "b", tmp_path / "lb", client_b)
        runc.wait(cid_b)
        wait_for(victim.rootfs / "data/done")
        subprocess.run(["runc", "--root", str(runc.root), "kill", cid_a, "KILL"])
        runc.wait(cid_a)
        agent.remove_container("a")
        agent.remove_container("b")

    digest = sha256_file(program)
    assert [digest] in measured(read_list(tmp_path / "lb")).values()
    assert [digest] in measured(read_list(tmp_path / "la")).values()


def wait_for(path, timeout: float = 10) -> None:
    """Wait until a container has made `path`."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not made")
        time.sleep(0.05)
