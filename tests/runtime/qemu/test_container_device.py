"""A runc container gets its vTPM as /dev/tpm0 and /dev/tpmrm0, on a real kernel.

In the QEMU guest, `cvtpm daemon` runs as on a host with vtpm-proxy; runc
starts a busybox container whose config.json (from cvtpm's bundle code) calls
`cvtpm-hook` and asks for device exposure. What the container reads from its
PCR 10 must be what replaying its measurement list gives.
"""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.qemu


def _facts(output: str) -> dict:
    line = next(ln for ln in output.splitlines() if ln.startswith("facts="))
    return json.loads(line.removeprefix("facts="))


def _pcr10_after(marker: str, output: str) -> str:
    tail = output.split(marker, 1)[1]
    match = re.search(r"^\s*10\s*:\s*(0x[0-9A-Fa-f]+)\s*$", tail, re.MULTILINE)
    assert match, f"no PCR 10 after {marker!r} in:\n{output}"
    return match.group(1).lower()


def test_daemon_starts_in_the_guest(guest_check):
    """`cvtpm daemon` comes up and listens on its unix socket."""
    assert "daemon=up" in guest_check("daemon_start").output


def test_container_sees_tpm0_and_tpmrm0(guest_check):
    """Inside the container, /dev/tpm0 and /dev/tpmrm0 are character devices."""
    output = guest_check("container_run").output

    for device in ("/dev/tpm0", "/dev/tpmrm0"):
        line = next(ln for ln in output.splitlines() if ln.endswith(device))
        assert line.startswith("c"), line


def test_container_pcr10_is_the_replayed_list(guest_check):
    """PCR 10 read in the container, via either device, equals the list's replay."""
    run = guest_check("container_run").output
    replayed = _facts(guest_check("container_replay").output)

    assert replayed["entries"] > 1
    assert replayed["first"] == "boot_aggregate"
    assert _pcr10_after("via=tpmrm0", run) == replayed["sha256_pcr10"]
    assert _pcr10_after("via=tpm0", run) == replayed["sha256_pcr10"]


def test_container_cannot_extend_pcr10_through_the_device(guest_check):
    """The daemon relays the device's commands through the filter: PCR 10 extends
    from inside are refused with TPM_RC_LOCALITY."""
    output = guest_check("container_run").output

    assert "extend10=0" not in output
    assert "0x907" in output


def test_container_list_holds_what_it_ran(guest_check):
    """The container's list measures tpm2-tools, which it executed to read PCR 10."""
    replayed = _facts(guest_check("container_replay").output)

    assert "/usr/bin/tpm2" in replayed["paths"]


def test_daemon_stops_and_the_devices_go(guest_check):
    """After the container and the daemon stop, no vTPM device is left behind."""
    output = guest_check("daemon_stop").output

    assert "daemon=gone" in output
    assert "devices=none" in output
