"""`cvtpm daemon` killed with SIGKILL mid-burst: nothing that ran goes unrecorded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cvtpm.ima.entry import MEASUREMENT_GAP
from cvtpm.ima.replay import replay
from cvtpm.measure.journal import BINARY_NAME, read_list
from tests.support.runc import Bundle, Runc, make_program, sha256_file

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]

PROGRAMS = 30


def _worker_pid(keeper: int) -> int | None:
    """The pid of the keeper's worker child, if it has one now."""
    children = Path(f"/proc/{keeper}/task/{keeper}/children").read_text().split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"--fanotify-fd" in cmdline:
            return int(child)
    return None


def _wait(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _pcr10(tcti: str, bank: str) -> bytes:
    out = subprocess.run(
        ["tpm2_pcrread", "-T", tcti, f"{bank}:10"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return bytes.fromhex(out.strip().rsplit("0x", 1)[1])


def test_daemon_sigkill_mid_burst(paths, short_tmp):
    """After kill -9 of the daemon's worker, the keeper restarts it; the list and
    PCR 10 agree and every program that ran is in the list."""
    socket = paths.run / "daemon.sock"
    keeper = subprocess.Popen(
        [
            sys.executable, "-m", "cvtpm.cli.main",
            "--state-dir", str(paths.state), "--run-dir", str(paths.run),
            "daemon", "--pool", "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    runc = Runc(short_tmp / "runc-root")
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=30)
    try:
        _wait(socket.exists, what="the daemon's socket")
        _wait(lambda: client.get("http://cvtpm/v1/health").status_code == 200)

        bundle = Bundle(short_tmp / "b")
        programs = [
            make_program(bundle.rootfs, f"/opt/p{i}", i.to_bytes(2, "big"))
            for i in range(PROGRAMS)
        ]
        # The container stays up afterwards: its vTPM goes when it exits.
        bundle.set_script(
            f"i=0; while [ $i -lt {PROGRAMS} ]; do "
            '/opt/p$i/true; echo "$i $?" >> /data/ran; i=$((i+1)); done; '
            "touch /data/done; sleep 60"
        )
        cid, pid = runc.create(bundle)
        answer = client.post(
            "http://cvtpm/v1/containers",
            json={"name": "burst", "pid": pid, "rootfs": str(bundle.rootfs)},
        )
        assert answer.status_code == 200, answer.text
        tcti = answer.json()["vtpm"]["tcti"]
        list_path = paths.lists / "burst" / BINARY_NAME

        runc.start(cid)
        # read_list, not parse_binary: the agent may be mid-append.
        _wait(lambda: len(read_list(list_path.parent)) >= 8, what="the burst")
        worker = _worker_pid(keeper.pid)
        os.kill(worker, signal.SIGKILL)
        _wait(lambda: (bundle.rootfs / "data/done").exists(), what="the loop's end")
        _wait(
            lambda: _worker_pid(keeper.pid) not in (None, worker), what="a new worker"
        )

        # The shell's last execs (touch, sleep) may still be being recorded:
        # the list and PCR 10 must come to agree, in every bank.
        def agree() -> bool:
            listed = read_list(list_path.parent)
            return all(_pcr10(tcti, b) == replay(listed, b) for b in ("sha1", "sha256"))

        _wait(agree, what="the list and PCR 10 to agree")
        entries = read_list(list_path.parent)

        # The keeper held the group: nothing ran unmeasured, so no gap.
        assert MEASUREMENT_GAP not in [e.path for e in entries]
        logged = {(e.path, e.file_digest) for e in entries}
        ran = [
            line.split()
            for line in (bundle.rootfs / "data/ran").read_text().split("\n")
            if line
        ]
        # At most the one access in flight at the kill is denied.
        assert len(ran) >= PROGRAMS - 1
        succeeded = [int(i) for i, rc in ran if rc == "0"]
        assert len(succeeded) >= PROGRAMS - 1
        for i in succeeded:
            assert (f"/opt/p{i}/true", sha256_file(programs[i])) in logged
        assert client.delete("http://cvtpm/v1/containers/burst").status_code == 200
    finally:
        client.close()
        keeper.send_signal(signal.SIGTERM)
        try:
            keeper.wait(timeout=30)
        finally:
            runc.cleanup()
    assert keeper.returncode == 0, keeper.stderr.read()


def _start_daemon(paths) -> subprocess.Popen:
    keeper = subprocess.Popen(
        [sys.executable, "-m", "cvtpm.cli.main", "--state-dir", str(paths.state),
         "--run-dir", str(paths.run), "daemon", "--pool", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(paths.run / "daemon.sock")), timeout=30
    )
    _wait(lambda: (paths.run / "daemon.sock").exists(), what="the daemon's socket")
    _wait(lambda: client.get("http://cvtpm/v1/health").status_code == 200)
    client.close()
    return keeper


def test_a_stopped_daemon_leaves_a_gap_in_the_list(paths, short_tmp):
    """A container that ran on while the daemon was stopped (not crashed) gets a
    measurement-gap violation in its list when the next daemon adopts it."""
    runc = Runc(short_tmp / "runc-root")
    keeper = _start_daemon(paths)
    try:
        bundle = Bundle(short_tmp / "b")
        make_program(bundle.rootfs, "/opt/unseen", b"unseen")
        bundle.set_script("trap 'exit 0' TERM; sleep 60 & wait")
        cid, pid = runc.create(bundle)
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(paths.run / "daemon.sock")),
            timeout=30,
        ) as client:
            answer = client.post(
                "http://cvtpm/v1/containers",
                json={"name": "gap", "pid": pid, "rootfs": str(bundle.rootfs)},
            )
        assert answer.status_code == 200, answer.text
        tcti = answer.json()["vtpm"]["tcti"]
        runc.start(cid)
        list_dir = paths.lists / "gap"
        _wait(lambda: len(read_list(list_dir)) >= 2, what="the shell's measurement")

        # An orderly stop: the fanotify group closes and nothing is measured.
        keeper.send_signal(signal.SIGTERM)
        keeper.wait(timeout=60)
        subprocess.run(
            ["runc", "--root", str(runc.root), "exec", cid, "/opt/unseen/true"],
            check=True,
        )
        keeper = _start_daemon(paths)

        def gap_recorded() -> bool:
            return read_list(list_dir)[-1].path == MEASUREMENT_GAP

        _wait(gap_recorded, what="the gap entry")
        entries = read_list(list_dir)
        assert "/opt/unseen/true" not in [e.path for e in entries]
        assert entries[-1].template_digest == bytes(20)
        for bank in ("sha1", "sha256"):
            assert _pcr10(tcti, bank) == replay(entries, bank)
    finally:
        # A daemon's stop keeps its containers' vTPMs running for the next
        # daemon; this test's must go with it.
        with (
            httpx.Client(
                transport=httpx.HTTPTransport(uds=str(paths.run / "daemon.sock")),
                timeout=30,
            ) as client,
            contextlib.suppress(httpx.HTTPError),
        ):
            client.delete("http://cvtpm/v1/containers/gap")
        keeper.send_signal(signal.SIGTERM)
        try:
            keeper.wait(timeout=30)
        finally:
            runc.cleanup()
