"""The agent killed with SIGKILL mid-burst: nothing that ran goes unrecorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.support.runc import make_program, sha256_file

from cvtpm.ima.replay import replay
from cvtpm.measure import fanotify
from cvtpm.measure.journal import read_list

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]

PROGRAMS = 30


def start_agent(config_path, group: int) -> subprocess.Popen:
    """Run the standalone agent with the fanotify group inherited as `group`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvtpm.measure.standalone", str(config_path)],
        pass_fds=(group,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def test_sigkill_mid_burst_then_restart(runc, bundle_factory, swtpm_factory, tmp_path):
    """After kill -9 and a restart, list and PCR 10 agree and every program that
    ran is in the list (accesses in flight at the kill are denied, not let through)."""
    bundle = bundle_factory()
    programs = [
        make_program(bundle.rootfs, f"/opt/p{i}", i.to_bytes(2, "big"))
        for i in range(PROGRAMS)
    ]
    bundle.set_script(
        f"i=0; while [ $i -lt {PROGRAMS} ]; do "
        '/opt/p$i/true; echo "$i $?" >> /data/ran; i=$((i+1)); done'
    )
    tpm = swtpm_factory()
    list_dir = tmp_path / "list"

    # The group outlives the agent, as a service manager's fd store would keep it.
    group = fanotify.init_group()
    try:
        cid, pid = runc.create(bundle)
        config = tmp_path / "agent.json"
        config.write_text(
            json.dumps(
                {
                    "fanotify_fd": group,
                    "containers": [
                        {
                            "name": "c",
                            "list_dir": str(list_dir),
                            "tcti": tpm.tcti,
                            "pid": pid,
                        }
                    ],
                }
            )
        )
        first = start_agent(config, group)
        runc.start(cid)

        # Kill mid-burst, leave the container blocked a moment, then restart.
        deadline = time.monotonic() + 30
        while len(read_list(list_dir)) < 8:
            assert time.monotonic() < deadline, "the burst did not start"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = len(read_list(list_dir))
        time.sleep(0.3)
        second = start_agent(config, group)
        runc.wait(cid)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        os.close(group)

    entries = read_list(list_dir)
    assert killed_at < PROGRAMS + 2, "the kill came after the burst"
    assert tpm.pcr10("sha256") == replay(entries, "sha256")
    assert tpm.pcr10("sha1") == replay(entries, "sha1")

    logged = {(e.path, e.file_digest) for e in entries}
    ran = [
        line.split() for line in (bundle.rootfs / "data/ran").read_text().splitlines()
    ]
    # The one access in flight at the kill is denied. When that access is the
    # shell opening /data/ran rather than an exec, its line is missing.
    assert len(ran) >= PROGRAMS - 1
    succeeded = [int(i) for i, rc in ran if rc == "0"]
    assert len(succeeded) >= PROGRAMS - 2
    for i in succeeded:
        assert (f"/opt/p{i}/true", sha256_file(programs[i])) in logged
