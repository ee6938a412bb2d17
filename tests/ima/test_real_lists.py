"""Every expected value stated for the real lists in tests/assets/SOURCES.md."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cvtpm.ima import dump_ascii, dump_binary, parse_ascii, parse_binary, replay
from cvtpm.ima.signature import Keyring, parse_signature

from .conftest import SIGNED_KEYS

IBMTSS_PCR10 = {
    "sha1": "9be6bac02bf18d09d17e726c2df00bca4e8831ea",
    "sha256": "7fac48c81837d6d29046008aef0cdad8c2745cc98c3340cbba9bfdf39b4124b8",
    "sha384": "e8923687b18847064ff3af89fd7ed088fa03c8b2467f7f8648bab264684575be"
    "b92e707d813ed561189492bb4b6e5c8b",
    "sha512": "698dab0fbb7c4ae0ec4ecae0d3890e9635cc2ba97b9dec459f9ef867b96d8588"
    "43697c701e580931d6f2cf1e18acb2b3192eb660e871a37cf5b45392086ce807",
}


def test_ibmtss_shape(ibmtss_bytes):
    """The ibmtss list has 362 ima-sig entries on PCR 10 with sha256 file digests."""
    entries = parse_binary(ibmtss_bytes)

    assert len(entries) == 362
    assert {e.template_name for e in entries} == {"ima-sig"}
    assert {e.pcr for e in entries} == {10}
    assert {len(e.template_digest) for e in entries} == {20}
    assert {e.digest_alg for e in entries} == {"sha256"}
    assert entries[0].path == "boot_aggregate"


def test_ibmtss_signatures(ibmtss_bytes):
    """21 entries carry an ECDSA v2 signature: header 03 02 04, keyid a3204a9e."""
    signed = [e for e in parse_binary(ibmtss_bytes) if e.signature]

    assert len(signed) == 21
    assert {e.signature[:3] for e in signed} == {bytes.fromhex("030204")}
    parsed = [parse_signature(e.signature) for e in signed]
    assert {p.keyid.hex() for p in parsed} == {"a3204a9e"}
    assert {p.hash_name for p in parsed} == {"sha256"}


def test_ibmtss_pcr10_in_every_bank(ibmtss_bytes):
    """Replaying the whole list gives the four PCR 10 values of the source's test."""
    entries = parse_binary(ibmtss_bytes)

    for bank, expected in IBMTSS_PCR10.items():
        assert replay(entries, bank).hex() == expected, bank


def test_ibmtss_round_trip(ibmtss_bytes):
    """Binary parse then encode gives back the very same bytes."""
    assert dump_binary(parse_binary(ibmtss_bytes)) == ibmtss_bytes


def test_ibmtss_template_digests(ibmtss_bytes):
    """Every template digest is SHA-1 over the template data."""
    assert all(e.template_digest_matches() for e in parse_binary(ibmtss_bytes))


def test_rpi_shape(rpi_bytes):
    """The rpi list: 922 ima-ng lines, sha256 file digests, boot_aggregate first."""
    entries = parse_ascii(rpi_bytes)

    assert len(entries) == 922
    assert {e.template_name for e in entries} == {"ima-ng"}
    assert {e.digest_alg for e in entries} == {"sha256"}
    assert {len(e.template_digest) for e in entries} == {20}
    assert entries[0].path == "boot_aggregate"


def test_rpi_template_hashes(rpi_bytes):
    """Each line's template hash is sha1 of the template data rebuilt from the line."""
    for entry in parse_ascii(rpi_bytes):
        assert entry.template_digest == hashlib.sha1(entry.template_data).digest()


def test_rpi_pcr10(rpi_bytes):
    """The sha1-bank PCR 10 after the whole list is the captured value."""
    entries = parse_ascii(rpi_bytes)

    assert replay(entries, "sha1").hex() == "f38695bbd9479953543813fb13bb88235440504e"


def test_rpi_round_trip(rpi_bytes):
    """Ascii parse then format gives back the very same text."""
    assert dump_ascii(parse_ascii(rpi_bytes)).encode() == rpi_bytes


def test_signed_shape(signed_bytes):
    """Six lines: three unsigned ima-sig (trailing space), RSA, ECDSA, then ima-buf."""
    entries = parse_ascii(signed_bytes)
    lines = signed_bytes.decode().splitlines()

    assert [e.template_name for e in entries] == ["ima-sig"] * 5 + ["ima-buf"]
    assert [bool(e.signature) for e in entries[:5]] == [False] * 3 + [True] * 2
    assert all(line.endswith(" ") for line in lines[:3])
    assert entries[3].path == "/usr/bin/dd"
    assert entries[4].path == "/usr/bin/zmore"
    assert entries[5].path == ".ima"


def test_signed_signature_headers(signed_bytes):
    """Line 4 is signed by keyid f3452d23, line 5 by keyid 531f4025, both v2 sha256."""
    entries = parse_ascii(signed_bytes)

    rsa = parse_signature(entries[3].signature)
    ecdsa = parse_signature(entries[4].signature)
    assert (rsa.keyid.hex(), rsa.hash_name) == ("f3452d23", "sha256")
    assert (ecdsa.keyid.hex(), ecdsa.hash_name) == ("531f4025", "sha256")
    assert len(rsa.signature) == 256  # RSA-2048


def test_signed_key_types():
    """The PEM file holds an RSA-2048 key and an ECDSA secp256k1 key."""
    keyring = Keyring.from_pem(SIGNED_KEYS.read_bytes())
    rsa_key = keyring.get(bytes.fromhex("f3452d23"))
    ec_key = keyring.get(bytes.fromhex("531f4025"))

    assert isinstance(rsa_key, rsa.RSAPublicKey) and rsa_key.key_size == 2048
    assert isinstance(ec_key, ec.EllipticCurvePublicKey)
    assert isinstance(ec_key.curve, ec.SECP256K1)


def test_signed_buffer_digest(signed_bytes):
    """sha256 of line 6's buffer (a DER certificate) equals its logged digest."""
    buf_entry = parse_ascii(signed_bytes)[5]

    cert = x509.load_der_x509_certificate(buf_entry.buffer)
    assert cert.subject.rfc4514_string() == "CN=ecdsa-ca-signed-ec-key"
    assert hashlib.sha256(buf_entry.buffer).digest() == buf_entry.file_digest


def test_signed_pcr10(signed_bytes):
    """sha1-bank PCR 10 over lines 1-3 and over all six lines are the stated values."""
    entries = parse_ascii(signed_bytes)

    assert (
        replay(entries[:3], "sha1").hex() == "dff39e2db052e00d11f45770bb127c4053e14f32"
    )
    assert replay(entries, "sha1").hex() == "3071bc1579d80e38ff478dbccdd82e95b3f669a2"


def test_signed_round_trip(signed_bytes):
    """Ascii round trip keeps the trailing spaces of unsigned ima-sig lines."""
    assert dump_ascii(parse_ascii(signed_bytes)).encode() == signed_bytes


def test_ascii_and_binary_agree(signed_bytes):
    """An ascii list re-encoded as binary parses back to the same entries."""
    entries = parse_ascii(signed_bytes)

    assert parse_binary(dump_binary(entries)) == entries
