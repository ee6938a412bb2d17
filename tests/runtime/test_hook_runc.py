"""`cvtpm run` and the OCI hook with runc and the real daemon, end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cvtpm.config import Paths
from cvtpm.runtime.bundle import RunSpec, oci_config, write_bundle
from cvtpm.runtime.rootfs import busybox_rootfs, tpm2_tools_binds
from cvtpm.vtpm.manager import VtpmManager
from tests.runtime.containers import (
    CVTPM,
    ZERO,
    cvtpm,
    leftovers,
    pcr_value,
    replay_sha256,
    running_daemon,
)

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A daemon on its own state tree, and a busybox rootfs; yields (paths, rootfs)."""
    top = Path(tempfile.mkdtemp(prefix="cvrt", dir="/tmp"))
    paths = Paths(state=top / "state", run=top / "run")
    rootfs = busybox_rootfs(tmp_path_factory.mktemp("rootfs"))
    try:
        with running_daemon(paths, top / "daemon.log"):
            yield paths, rootfs
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_with_tpm2(paths, rootfs, name, script, *options):
    """`cvtpm run` a shell script with tpm2-tools bound into the container."""
    binds = [f"--bind={host}:{inside}" for host, inside in tpm2_tools_binds()]
    return cvtpm(
        paths,
        "run",
        "--name",
        name,
        *options,
        *binds,
        str(rootfs),
        "--",
        "sh",
        "-c",
        script,
    )


def test_pcrread_inside_shows_the_containers_pcr_10(host):
    """tpm2_pcrread inside prints the vTPM's PCR 10, the replay of its own list."""
    paths, rootfs = host
    done = run_with_tpm2(paths, rootfs, "r1", "tpm2 pcrread sha256:10")
    assert done.returncode == 0, done.stderr

    log = cvtpm(paths, "log", "r1", "--bank", "sha256")
    assert log.returncode == 0, log.stderr
    assert pcr_value(done.stdout) == replay_sha256(log.stdout)
    assert pcr_value(done.stdout) != "0" * 64


def test_extend_of_pcr_10_is_refused_inside(host):
    """PCR_Extend of 10 fails inside with TPM_RC_LOCALITY; 16 succeeds."""
    paths, rootfs = host
    script = (
        f"tpm2 pcrextend 10:sha256={ZERO}; echo ten=$?; "
        f"tpm2 pcrextend 16:sha256={ZERO}; echo sixteen=$?"
    )
    done = run_with_tpm2(paths, rootfs, "r2", script, "--ephemeral")
    assert done.returncode == 0, done.stderr
    assert "ten=1" in done.stdout and "sixteen=0" in done.stdout
    assert "0x907" in done.stderr


def test_environment_and_exit_status(host):
    """The TCTI variables are set, /run/tpm holds the sockets, the status passes."""
    paths, rootfs = host
    script = "echo $TPM2TOOLS_TCTI; test -S /run/tpm/tpm.sock.ctrl && exit 7"
    done = cvtpm(paths, "run", "--ephemeral", str(rootfs), "--", "sh", "-c", script)
    assert done.returncode == 7, done.stderr
    assert done.stdout.strip() == "swtpm:path=/run/tpm/tpm.sock"


def test_restart_keeps_ek_certificate_and_pcr_10(host):
    """A second run finds the same EK certificate, and PCR 10 equal to the replay of
    the whole list, both runs included."""
    paths, rootfs = host
    script = "tpm2 nvread 0x01c0000a | sha256sum; tpm2 pcrread sha256:10"
    first = run_with_tpm2(paths, rootfs, "r3", script)
    assert first.returncode == 0, first.stderr
    entries = len(cvtpm(paths, "log", "r3").stdout.splitlines())

    second = run_with_tpm2(paths, rootfs, "r3", script)
    assert second.returncode == 0, second.stderr
    log = cvtpm(paths, "log", "r3", "--bank", "sha256").stdout
    assert first.stdout.splitlines()[0] == second.stdout.splitlines()[0]
    assert len(log.splitlines()) > entries
    assert pcr_value(second.stdout) == replay_sha256(log)


def test_ephemeral_container_leaves_nothing(host):
    """An ephemeral container's vTPM, list, sockets and records are gone after it."""
    paths, rootfs = host
    done = cvtpm(paths, "run", "--name", "e1", "--ephemeral", str(rootfs), "--", "true")
    assert done.returncode == 0, done.stderr

    assert "e1" not in [info.name for info in VtpmManager(paths).list()]
    assert not (paths.lists / "e1").exists()
    assert not (paths.run / "containers" / "e1").exists()
    assert not (paths.run / "hooks" / "e1.json").exists()
    assert cvtpm(paths, "vtpm", "show", "e1").returncode != 0


def test_fifty_containers_leave_no_process_socket_or_mount(host):
    """Fifty containers started and stopped in turn leave nothing running behind."""
    paths, rootfs = host
    for index in range(50):
        options = ["--ephemeral", "--name", f"eph{index}"]
        if index % 2 == 0:
            options = ["--name", f"loop{index % 5}"]
        done = cvtpm(paths, "run", *options, str(rootfs), "--", "true")
        assert done.returncode == 0, done.stderr

    assert leftovers(paths) == {"swtpm": [], "sockets": [], "mounts": [], "running": []}
    assert list(paths.run.glob("bundle-*")) == []
    assert not (rootfs / "run" / "tpm").exists()
    names = [info.name for info in VtpmManager(paths).list()]
    assert [n for n in names if n.startswith("loop")] == [f"loop{i}" for i in range(5)]
    assert not [n for n in names if n.startswith("eph")]


def test_container_without_a_vtpm_is_left_alone(host):
    """Without the annotation the hook does nothing: no daemon call, no mount."""
    paths, rootfs = host
    bundle = Path(tempfile.mkdtemp(dir=paths.run))
    (bundle / "config.json").write_text(json.dumps({"root": {"path": str(rootfs)}}))
    state = {
        "ociVersion": "1.0.2",
        "id": "plain",
        "status": "creating",
        "pid": 1,
        "bundle": str(bundle),
    }
    argv = [CVTPM, "--state-dir", str(paths.state), "--run-dir", str(paths.run)]

    done = subprocess.run(
        [*argv, "hook", "create-runtime", "--json"],
        input=json.dumps(state),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["action"] == "skipped"
    shutil.rmtree(bundle)


def test_the_daemon_refuses_a_hook_meant_for_other_directories(host, tmp_path):
    """A hook configured with another --state-dir is refused, naming both."""
    paths, rootfs = host
    (tmp_path / "config.json").write_text(
        json.dumps({"root": {"path": str(rootfs)}, "annotations": {}})
    )
    state = {"id": "x", "pid": 99999, "bundle": str(tmp_path), "status": "creating"}
    state["annotations"] = {"io.cvtpm.vtpm": "enabled"}
    done = subprocess.run(
        [str(Path(CVTPM).with_name("cvtpm-hook")), "--run-dir", str(paths.run),
         "--state-dir", "/srv/elsewhere", "create-runtime"],
        input=json.dumps(state), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--state-dir /srv/elsewhere" in done.stderr
    assert f"keeps its state in {paths.state}" in done.stderr


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ('{"bundle": "/x", "annotations": {"io.cvtpm.vtpm": "enabled"}}',
         "OCI state: id is missing"),
        ('{"id": "x", "bundle": "/nonexistent", "pid": 5,'
         ' "annotations": {"io.cvtpm.vtpm": "enabled"}}',
         "cannot read the OCI config /nonexistent/config.json"),
        ("not json", "OCI state is not JSON"),
    ],
)  # fmt: skip
def test_a_bad_state_is_named_by_the_daemon(host, state, message):
    """What the daemon cannot use in a state reaches the runtime as one line."""
    paths, _ = host
    done = subprocess.run(
        [str(Path(CVTPM).with_name("cvtpm-hook")), "--run-dir", str(paths.run),
         "create-runtime"],
        input=state, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert message in done.stderr and done.stderr.count("\n") == 1


def test_plain_runc_run_needs_no_poststop_hook(host, tmp_path):
    """With only the createRuntime hook, `runc run` of an ephemeral container
    leaves nothing once it exits: the daemon saw the process go."""
    paths, rootfs = host
    spec = RunSpec(rootfs, ["true"], "plain1", ephemeral=True)
    config = oci_config(spec, paths)
    assert list(config["hooks"]) == ["createRuntime"]
    bundle = write_bundle(tmp_path / "bundle", config)
    runc_root = str(tmp_path / "runc")

    done = subprocess.run(
        ["runc", "--root", runc_root, "run", "--bundle", str(bundle), "plain1"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    deadline = time.monotonic() + 20
    while "plain1" in cvtpm(paths, "vtpm", "list", "--json").stdout:
        assert time.monotonic() < deadline, "the vTPM of plain1 is still there"
        time.sleep(0.05)
    assert leftovers(paths)["swtpm"] == []
    assert not (paths.run / "containers" / "plain1").exists()


def test_a_taken_name_is_refused_and_its_container_untouched(host):
    """`cvtpm run --name X` while X runs fails at once; the running X lives on."""
    paths, rootfs = host
    first = subprocess.Popen(
        [CVTPM, "--state-dir", str(paths.state), "--run-dir", str(paths.run),
         "run", "--name", "busy", str(rootfs), "--",
         "sh", "-c", "trap 'exit 0' TERM; sleep 30 & wait"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "busy" not in cvtpm(paths, "vtpm", "list").stdout:
            assert time.monotonic() < deadline, "the first container did not start"
            time.sleep(0.1)
        again = cvtpm(paths, "run", "--name", "busy", str(rootfs), "--", "true")
        assert again.returncode == 1
        assert "busy" in again.stderr and "pick another --name" in again.stderr
        time.sleep(0.5)
        assert first.poll() is None, "the running container was killed"
    finally:
        first.terminate()
        first.wait(timeout=60)


def test_ephemeral_may_not_take_a_kept_name(host):
    """An ephemeral run of a name with a kept vTPM and list is refused; both stay."""
    paths, rootfs = host
    assert (
        cvtpm(paths, "run", "--name", "kept", str(rootfs), "--", "true").returncode == 0
    )
    before = cvtpm(paths, "log", "kept").stdout

    done = cvtpm(
        paths, "run", "--name", "kept", "--ephemeral", str(rootfs), "--", "true"
    )
    assert done.returncode != 0
    assert "an ephemeral container deletes its vTPM and list" in done.stderr
    assert cvtpm(paths, "log", "kept").stdout == before
    assert "kept" in [info.name for info in VtpmManager(paths).list()]


def test_a_refused_container_leaves_a_running_vtpm_running(host):
    """A run the daemon refuses does not stop the vTPM it tried to use."""
    paths, rootfs = host
    assert cvtpm(paths, "vtpm", "create", "lab").returncode == 0
    tcti = json.loads(cvtpm(paths, "vtpm", "show", "lab", "--json").stdout)["tcti"]
    # PCR 10 no longer matches an empty list: the daemon refuses the container.
    subprocess.run(["tpm2_pcrextend", "-T", tcti, f"10:sha256={ZERO}"], check=True)

    done = cvtpm(paths, "run", "--name", "lab", str(rootfs), "--", "true")
    assert done.returncode != 0
    manager = VtpmManager(paths)
    assert manager.is_running("lab")
    assert not (paths.lists / "lab").exists()
    manager.stop("lab")


def test_binding_cvtpms_state_into_a_container_is_refused(host):
    """--bind of the state directory (the master key is there) is refused."""
    paths, rootfs = host
    done = cvtpm(
        paths,
        "run",
        "--ephemeral",
        f"--bind={paths.state}:/s",
        str(rootfs),
        "--",
        "true",
    )
    assert done.returncode == 1
    assert f"cvtpm's {paths.state}" in done.stderr and "master" not in done.stdout
