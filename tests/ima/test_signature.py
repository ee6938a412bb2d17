"""IMA v2 signatures: header parsing, keyids, verification against real keys."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cvtpm.errors import ParseError
from cvtpm.ima import parse_ascii, replay
from cvtpm.ima.entry import Entry, make_entry
from cvtpm.ima.signature import (
    Keyring,
    keyid,
    parse_signature,
    verify_signature,
)

from .conftest import SIGNED_KEYS


def malformed_line5(signed_bytes: bytes) -> bytes:
    """Line 5 with the signature's 2-byte length 0048 changed to 4800."""
    lines = signed_bytes.decode().splitlines(keepends=True)
    head, sig = lines[4].rstrip("\n").rsplit(" ", 1)
    assert sig[14:18] == "0048"
    lines[4] = f"{head} {sig[:14]}4800{sig[18:]}\n"
    return "".join(lines).encode()


def rehash(entry: Entry) -> Entry:
    """The entry with its template hash recomputed, as a consistent log would have."""
    return make_entry(
        entry.template_name,
        entry.path,
        entry.file_digest,
        entry.digest_alg,
        signature=entry.signature,
        pcr=entry.pcr,
    )


def test_keyids_of_published_keys():
    """The RSA key's keyid is f3452d23 and the EC key's 531f4025."""
    keyring = Keyring.from_pem(SIGNED_KEYS.read_bytes())

    assert [k.hex() for k in keyring.keyids()] == ["f3452d23", "531f4025"]


def test_both_signatures_verify_with_both_keys(signed_bytes):
    """With both keys, lines 4 (RSA) and 5 (ECDSA secp256k1) verify."""
    keyring = Keyring.from_pem(SIGNED_KEYS.read_bytes())
    entries = parse_ascii(signed_bytes)

    for entry in entries[3:5]:
        check = verify_signature(
            entry.signature, entry.file_digest, entry.digest_alg, keyring
        )
        assert check.ok, check


def test_rsa_key_only(signed_bytes):
    """With only the RSA key, line 4 passes and line 5 fails for an unknown key."""
    rsa_pem = SIGNED_KEYS.read_text().split("-----END PUBLIC KEY-----")[0]
    keyring = Keyring.from_pem(rsa_pem + "-----END PUBLIC KEY-----\n")
    dd, zmore = parse_ascii(signed_bytes)[3:5]

    assert len(keyring) == 1
    assert verify_signature(dd.signature, dd.file_digest, "sha256", keyring).ok
    check = verify_signature(zmore.signature, zmore.file_digest, "sha256", keyring)
    assert (check.ok, check.reason) == (False, "signature.unknown_key")


def test_wrong_digest_is_invalid(signed_bytes):
    """A valid signature over another digest is reported invalid."""
    keyring = Keyring.from_pem(SIGNED_KEYS.read_bytes())
    dd = parse_ascii(signed_bytes)[3]

    check = verify_signature(dd.signature, bytes(32), "sha256", keyring)
    assert (check.ok, check.reason) == (False, "signature.invalid")


def test_algorithm_mismatch_is_invalid(signed_bytes):
    """A sha256 signature cannot vouch for a sha1 file digest."""
    keyring = Keyring.from_pem(SIGNED_KEYS.read_bytes())
    dd = parse_ascii(signed_bytes)[3]

    check = verify_signature(dd.signature, bytes(20), "sha1", keyring)
    assert check.reason == "signature.invalid"
    assert "sha1" in check.message


def test_malformed_variant_parse_error(signed_bytes):
    """The 0048 -> 4800 variant parses as a list but its signature is malformed."""
    entries = parse_ascii(malformed_line5(signed_bytes))

    with pytest.raises(ParseError, match="malformed signature"):
        parse_signature(entries[4].signature)


def test_malformed_variant_is_replayed_as_opaque_bytes(signed_bytes):
    """Replay treats the bad signature as bytes; with the template hash recomputed
    the log stays consistent and replays to H(template data) like any entry."""
    entries = parse_ascii(malformed_line5(signed_bytes))
    fixed = [*entries[:4], rehash(entries[4]), entries[5]]

    assert fixed[4].template_digest_matches()
    assert fixed[4].signature == entries[4].signature
    assert replay(fixed, "sha1") != replay(parse_ascii(signed_bytes), "sha1")
    assert not entries[4].template_digest_matches()  # the untouched hash is stale


def test_malformed_variant_fails_verification(signed_bytes):
    """Checking the malformed signature gives signature.malformed, not an exception."""
    keyring = Keyring.from_pem(SIGNED_KEYS.read_bytes())
    zmore = parse_ascii(malformed_line5(signed_bytes))[4]

    check = verify_signature(zmore.signature, zmore.file_digest, "sha256", keyring)
    assert (check.ok, check.reason) == (False, "signature.malformed")
    assert "malformed signature" in check.message


@pytest.mark.parametrize(
    ("sig", "offset"),
    [
        (b"", 0),
        (bytes.fromhex("0302"), 0),
        (bytes.fromhex("010204a3204a9e0000"), 0),
        (bytes.fromhex("030104a3204a9e0000"), 1),
        (bytes.fromhex("0302ffa3204a9e0000"), 2),
        (bytes.fromhex("030204a3204a9e000200"), 7),
        (bytes.fromhex("030204a3204a9e0001"), 7),
    ],
)
def test_malformed_headers(sig, offset):
    """Every defect of the header is a 'malformed signature' ParseError at its byte."""
    with pytest.raises(ParseError, match="malformed signature") as info:
        parse_signature(sig)

    assert info.value.offset == offset


def test_keyid_rule_for_generated_keys():
    """keyid = last 4 bytes of SHA-1 over PKCS#1 RSAPublicKey or the EC point."""
    rsa_key = rsa.generate_private_key(65537, 2048).public_key()
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()

    pkcs1 = rsa_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    point = ec_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert keyid(rsa_key) == hashlib.sha1(pkcs1).digest()[-4:]
    assert keyid(ec_key) == hashlib.sha1(point).digest()[-4:]


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_signatures_made_by_evmctl_verify(tmp_path, kind):
    """A signature made by `evmctl ima_sign` parses and verifies with our keyring."""
    if kind == "rsa":
        private = rsa.generate_private_key(65537, 2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    target = tmp_path / "program"
    target.write_bytes(b"#!/bin/sh\necho measured\n")

    subprocess.run(
        [
            "evmctl",
            "ima_sign",
            "--sigfile",
            "--hashalgo",
            "sha256",
            "--key",
            str(key_file),
            str(target),
        ],
        check=True,
        capture_output=True,
    )
    sig = (tmp_path / "program.sig").read_bytes()

    parsed = parse_signature(sig)
    assert parsed.keyid == keyid(private.public_key())
    keyring = Keyring([private.public_key()])
    file_digest = hashlib.sha256(target.read_bytes()).digest()
    assert verify_signature(sig, file_digest, "sha256", keyring).ok
