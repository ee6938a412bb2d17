"""podman with the hooks.d files of `cvtpm install-hooks` and the real daemon."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cvtpm.config import Paths
from cvtpm.runtime.daemon_client import DaemonClient
from cvtpm.runtime.rootfs import busybox_rootfs, tpm2_tools_binds
from tests.runtime.containers import (
    ZERO,
    cvtpm,
    pcr_value,
    replay_sha256,
    running_daemon,
)

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]

TCTI = "TPM2TOOLS_TCTI=swtpm:path=/run/tpm/tpm.sock"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A daemon, the hooks installed in a private hooks.d; yields (paths, hooks)."""
    top = Path(tempfile.mkdtemp(prefix="cvpt", dir="/tmp"))
    paths = Paths(state=top / "state", run=top / "run")
    hooks = top / "hooks.d"
    try:
        with running_daemon(paths, top / "daemon.log"):
            done = cvtpm(paths, "install-hooks", "--hooks-dir", str(hooks), "--no-cdi")
            assert done.returncode == 0, done.stderr
            yield paths, hooks
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def rootfs(tmp_path):
    """A fresh busybox rootfs (podman writes into it)."""
    return busybox_rootfs(tmp_path / "rootfs")


def podman(hooks: Path, rootfs: Path, *options: str, script: str):
    """`podman run` a shell script in `rootfs` with tpm2-tools mounted read-only."""
    volumes = [f"-v={host}:{inside}:ro" for host, inside in tpm2_tools_binds()]
    return subprocess.run(
        [
            "podman",
            "--hooks-dir",
            str(hooks),
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            *options,
            *volumes,
            "--rootfs",
            str(rootfs),
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_podman_container_gets_its_filtered_tpm(host, rootfs):
    """With the annotation, tpm2_pcrread shows the container's PCR 10, PCR 10 cannot
    be extended, and after the container the daemon and the rootfs are clean."""
    paths, hooks = host
    script = f"tpm2 pcrread sha256:10; tpm2 pcrextend 10:sha256={ZERO}; echo ten=$?"
    done = podman(
        hooks,
        rootfs,
        "--annotation=io.cvtpm.vtpm=enabled",
        "--annotation=io.cvtpm.name=pod1",
        f"-e={TCTI}",
        script=script,
    )
    assert done.returncode == 0, done.stderr
    assert "ten=1" in done.stdout and "0x907" in done.stderr

    log = cvtpm(paths, "log", "pod1", "--bank", "sha256").stdout
    assert pcr_value(done.stdout) == replay_sha256(log)
    with DaemonClient.for_paths(paths) as client:
        assert client.list_containers() == []
    assert not (rootfs / "run" / "tpm").exists()


def test_podman_container_without_the_annotation_gets_nothing(host, rootfs):
    """Without io.cvtpm.vtpm=enabled the hooks do not run: no /run/tpm inside."""
    _, hooks = host
    done = podman(hooks, rootfs, script="test -e /run/tpm; echo present=$?")
    assert done.returncode == 0, done.stderr
    assert "present=1" in done.stdout


def test_symlinked_run_is_refused_and_rolled_back(host, rootfs, tmp_path):
    """A rootfs whose /run points elsewhere does not start, and the daemon forgets
    the container: the hook never follows the image's symlinks."""
    paths, hooks = host
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (rootfs / "run").rmdir()
    (rootfs / "run").symlink_to(elsewhere)

    done = podman(
        hooks,
        rootfs,
        "--annotation=io.cvtpm.vtpm=enabled",
        "--annotation=io.cvtpm.name=pod2",
        "--annotation=io.cvtpm.ephemeral=true",
        script="true",
    )
    assert done.returncode != 0
    assert "not a plain directory" in done.stderr
    assert not (elsewhere / "tpm").exists()
    with DaemonClient.for_paths(paths) as client:
        assert client.list_containers() == []
