"""`cvtpm demo`, the main job, runs to the end with both verdicts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.runc, pytest.mark.swtpm]

CVTPM = str(Path(sys.executable).with_name("cvtpm"))


def test_demo_shows_trusted_then_not_trusted_naming_the_file():
    """The clean container is trusted; after the changed program runs it is not,
    and the failure names the program and its new digest."""
    done = subprocess.run([CVTPM, "demo"], capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "first attestation:  trusted" in out
    assert "second attestation: not trusted (/usr/bin/hello)" in out
    # Entries 0..N-1: boot_aggregate, the rootfs's files, then tpm2-tools
    # lent by `cvtpm run --tpm2-tools` (measured too: their bind mounts are
    # marked); entry N is the changed program, the only one checked again.
    first = re.search(r"entries 0\.\.(\d+) checked, quote over PCR 10 checked", out)
    changed = int(first[1]) + 1
    assert f"entries {changed}..{changed} checked" in out
    assert (
        f"policy.digest_mismatch at entry {changed}: /usr/bin/hello: digest sha256:"
        in out
    )
    assert re.search(r" /usr/bin/tpm2\n", out)  # in the list shown
    assert "bad locality" in out  # PCR 10 cannot be extended from inside
    assert "vTPMs left for containers: none" in out
    workdir = out.split("cvtpm demo in ", 1)[1].split()[0]
    assert not Path(workdir).exists()
