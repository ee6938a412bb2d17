"""Quotes cvtpm produces are accepted by tpm2-tools' own checker."""

from __future__ import annotations

import os
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from cvtpm.attest.evidence import collect_evidence
from cvtpm.tpm.structures import unmarshal_tpms_attest, unmarshal_tpmt_public

pytestmark = pytest.mark.swtpm


def test_tpm2_checkquote_accepts_our_evidence(vtpm, tmp_path):
    """tpm2_checkquote verifies the AK signature, nonce and PCR digest of our quote."""
    nonce = os.urandom(20)
    with vtpm.client() as tpm:
        evidence = collect_evidence(tpm, vtpm, nonce, vtpm.list_path, 0)
    attest = unmarshal_tpms_attest(evidence.attest)
    key = unmarshal_tpmt_public(evidence.ak_public).public_key()
    (tmp_path / "ak.pem").write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "attest.bin").write_bytes(evidence.attest)
    (tmp_path / "sig.bin").write_bytes(evidence.signature)
    # With -l, the PCR file is the selected values concatenated in selection order.
    order = [(sel.bank, pcr) for sel in attest.attested.pcr_select for pcr in sel.pcrs]
    values = b"".join(evidence.pcrs[bank][pcr] for bank, pcr in order)
    (tmp_path / "pcrs.bin").write_bytes(values)
    selection = "+".join(f"{sel.bank}:10" for sel in attest.attested.pcr_select)

    def checkquote(nonce_hex: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["tpm2_checkquote", "-u", "ak.pem", "-m", "attest.bin", "-s", "sig.bin"]
            + ["-f", "pcrs.bin", "-l", selection, "-g", "sha256", "-q", nonce_hex],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    accepted = checkquote(nonce.hex())
    assert accepted.returncode == 0, accepted.stderr
    assert checkquote(os.urandom(20).hex()).returncode != 0
