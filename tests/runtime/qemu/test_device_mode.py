"""The vtpm-proxy device path on a real kernel: Debian's, booted under QEMU."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from .guest_checks import EXTEND_DIGEST
from .guest_device import CLIENT_DIGEST

pytestmark = pytest.mark.qemu

ZERO_PCR = "0x" + "00" * 32


def _facts(output: str) -> dict:
    line = next(ln for ln in output.splitlines() if ln.startswith("facts="))
    return json.loads(line.removeprefix("facts="))


def _pcr10(output: str) -> str:
    match = re.search(r"^\s*10\s*:\s*(0x[0-9A-Fa-f]+)\s*$", output, re.MULTILINE)
    assert match, f"no PCR 10 in tpm2_pcrread output:\n{output}"
    return match.group(1).lower()


def test_vtpmx_appears_after_modprobe(guest_check):
    """Loading tpm_vtpm_proxy in the guest creates the /dev/vtpmx character device."""
    output = guest_check("vtpmx").output

    assert "before=absent" in output
    assert "after=character special file" in output


def test_start_creates_tpm_and_tpmrm_devices(guest_check):
    """vtpm_proxy.start returns a running swtpm and the devices the kernel made."""
    output = guest_check("device_start").output
    facts = _facts(output)
    nodes = {
        m["path"]: (int(m["major"], 16), int(m["minor"], 16))
        for m in re.finditer(
            r"^node (?P<path>\S+) character special file "
            r"(?P<major>[0-9a-f]+):(?P<minor>[0-9a-f]+)$",
            output,
            re.MULTILINE,
        )
    }

    assert facts["running"] is True
    assert facts["tpm"] == f"/dev/tpm{facts['number']}"
    assert facts["tpmrm"] == f"/dev/tpmrm{facts['number']}"
    assert facts["tcti"] == f"device:{facts['tpmrm']}"
    assert nodes[facts["tpm"]] == tuple(facts["tpm_devnum"])
    assert nodes[facts["tpmrm"]] == tuple(facts["tpmrm_devnum"])


def test_pcrread_through_tpm_device(guest_check):
    """tpm2_pcrread through /dev/tpmN reads the fresh vTPM's PCR 10 as all zeros."""
    assert _pcr10(guest_check("pcrread_tpm").output) == ZERO_PCR


def test_pcrread_through_resource_manager(guest_check):
    """tpm2_pcrread with TCTI device:/dev/tpmrmN reads the same PCR 10."""
    assert _pcr10(guest_check("pcrread_tpmrm").output) == ZERO_PCR


def test_extend_through_tpmrm_is_read_through_tpm(guest_check):
    """An extend sent through /dev/tpmrmN is what /dev/tpmN reads back."""
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(EXTEND_DIGEST)).hexdigest()

    assert _pcr10(guest_check("extend").output) == "0x" + expected


def test_tpm_client_works_over_the_device_tcti(guest_check):
    """cvtpm's TpmClient extends and reads PCRs through the device's TCTI."""
    facts = _facts(guest_check("device_client").output)
    expected = hashlib.sha256(bytes(32) + CLIENT_DIGEST).hexdigest()

    assert "sha256" in facts["banks"]
    assert facts["pcr23_sha256"] == expected


def test_stop_removes_devices(guest_check):
    """Stopping the swtpm through its control channel makes the kernel drop the chip."""
    facts = _facts(guest_check("device_stop").output)

    assert facts == {"running": False, "tpm_exists": False}


def test_resume_keeps_pcr10_across_a_restart(guest_check):
    """Started again with resume=True on its saved state, the chip keeps PCR 10."""
    output = guest_check("device_resume").output
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(EXTEND_DIGEST)).hexdigest()

    assert _facts(output)["running"] is True
    assert _pcr10(output) == "0x" + expected
