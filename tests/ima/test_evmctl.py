"""Lists we build are accepted by evmctl (ima-evm-utils), an independent reader."""

from __future__ import annotations

import datetime
import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from cvtpm.ima import (
    boot_aggregate,
    dump_binary,
    ima_buf,
    ima_legacy,
    ima_ng,
    ima_sig,
    replay,
    violation,
)
from cvtpm.ima.signature import keyid


def sign_v2(private: rsa.RSAPrivateKey, file_digest: bytes) -> bytes:
    """An IMA v2 signature (03 02 04 keyid len sig) over a sha256 file digest."""
    sig = private.sign(file_digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    header = struct.pack(">BBB4sH", 3, 2, 4, keyid(private.public_key()), len(sig))
    return header + sig


def write_pcrs(path: Path, bank: str, pcr10: bytes) -> str:
    """A PCR file as evmctl's --pcrs reads it ("PCR-NN: hex" per line)."""
    size = len(pcr10)
    lines = [
        f"PCR-{i:02d}: {(pcr10 if i == 10 else bytes(size)).hex()}\n" for i in range(24)
    ]
    path.write_text("".join(lines))
    return f"{bank},{path}"


def evmctl_measurement(tmp_path: Path, listing: bytes, expected: dict, *extra):
    """Run `evmctl ima_measurement` against expected PCR 10 values per bank."""
    list_file = tmp_path / "binary_runtime_measurements"
    list_file.write_bytes(listing)
    # evmctl extends a violation with zeros unless told --ignore-violations, with
    # which it extends 0xFF like the kernel (ima_queue.c); the name misleads.
    args = ["evmctl", "-v", "ima_measurement", "--ignore-violations", *extra]
    for bank, value in expected.items():
        args += ["--pcrs", write_pcrs(tmp_path / f"pcrs-{bank}", bank, value)]
    return subprocess.run(
        [*args, str(list_file)], capture_output=True, text=True, cwd=tmp_path
    )


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    """An RSA key that signs the test files."""
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def entries(signing_key):
    """boot_aggregate plus ima-ng, signed and unsigned ima-sig, ima-buf, violation."""
    pcrs = {"sha256": {i: bytes([i]) * 32 for i in range(24)}}
    busybox = hashlib.sha256(b"busybox").digest()
    app = hashlib.sha256(b"app").digest()
    return [
        boot_aggregate(pcrs, "ima-sig"),
        ima_ng("/bin/busybox", busybox),
        ima_ng("/etc/os release", hashlib.sha1(b"os").digest(), "sha1"),
        ima_sig("/usr/bin/app", app, signature=sign_v2(signing_key, app)),
        ima_sig("/usr/bin/unsigned", hashlib.sha256(b"u").digest()),
        ima_buf(".ima", b"\x30\x82 not really a certificate"),
        violation("/var/log/app.log", "ima-sig"),
        ima_ng("/bin/sh", hashlib.sha256(b"sh").digest()),
    ]


def test_evmctl_accepts_our_list_in_both_banks(tmp_path, entries):
    """evmctl replays our binary list to the PCR 10 values our replay computes."""
    expected = {bank: replay(entries, bank) for bank in ("sha1", "sha256")}

    result = evmctl_measurement(tmp_path, dump_binary(entries), expected)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Matched per TPM bank calculated digest" in result.stdout + result.stderr


def test_evmctl_rejects_a_wrong_pcr(tmp_path, entries):
    """The check has teeth: one flipped bit in the expected sha256 PCR fails it."""
    good = replay(entries, "sha256")
    wrong = bytes([good[0] ^ 1]) + good[1:]

    result = evmctl_measurement(tmp_path, dump_binary(entries), {"sha256": wrong})

    assert result.returncode != 0


def self_signed_der(private: rsa.RSAPrivateKey) -> bytes:
    """A DER self-signed certificate, the key form evmctl's --key reads."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cvtpm test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_evmctl_verifies_our_signature_layout(tmp_path, entries, signing_key):
    """With --verify-sig, evmctl finds our keyid and verifies the signed entry."""
    cert = tmp_path / "key.der"
    cert.write_bytes(self_signed_der(signing_key))
    signed = entries[:4]
    expected = {"sha1": replay(signed, "sha1")}

    result = evmctl_measurement(
        tmp_path, dump_binary(signed), expected, "--verify-sig", "--key", str(cert)
    )

    # evmctl exits 0 whatever the signatures; its verbose lines tell.
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"keyid: {keyid(signing_key.public_key()).hex()}" in output
    assert "/usr/bin/app: verification is OK" in output
    assert "verification failed" not in output


def test_evmctl_accepts_legacy_ima_template(tmp_path):
    """The legacy `ima` template's binary layout (no data length) is evmctl's too."""
    entries = [
        boot_aggregate({"sha1": {i: bytes([i]) * 20 for i in range(24)}}, "ima"),
        ima_legacy("/bin/busybox", hashlib.sha1(b"busybox").digest()),
        violation("/tmp/x", "ima"),
    ]
    expected = {bank: replay(entries, bank) for bank in ("sha1", "sha256")}

    result = evmctl_measurement(tmp_path, dump_binary(entries), expected)

    assert result.returncode == 0, result.stdout + result.stderr
