"""Certificates as TPMs store them, and chains to the trusted roots."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cvtpm.attest.trust import (
    ChainError,
    TrustStore,
    fingerprint,
    load_certificate,
    load_certificates,
)
from cvtpm.ca.authority import TpmIdentity
from cvtpm.errors import ParseError


@pytest.fixture(scope="module")
def ek_cert(local_ca):
    key = ec.generate_private_key(ec.SECP256R1())
    return local_ca.issue_ek_certificate(key.public_key(), TpmIdentity(1, "T", 1))


@pytest.mark.parametrize("padding", [b"", b"\x00" * 300, b"\xff" * 17])
def test_der_with_nv_padding_loads(ek_cert, padding):
    """A DER certificate followed by NV padding loads as the certificate alone."""
    der = ek_cert.public_bytes(serialization.Encoding.DER)
    assert fingerprint(load_certificate(der + padding)) == fingerprint(ek_cert)


def test_pem_loads(ek_cert):
    """PEM text loads too."""
    pem = ek_cert.public_bytes(serialization.Encoding.PEM).decode()
    assert load_certificate(pem) == ek_cert


@pytest.mark.parametrize(
    "data", [b"", b"\x31\x00", b"\x30\x85\x00\x00\x00\x00\x00", b"\x30\x82\xff\xff"]
)
def test_malformed_certificates_are_parse_errors(data):
    """Not a SEQUENCE, a bad length, or a length past the end: ParseError."""
    with pytest.raises(ParseError):
        load_certificate(data)


def test_chain_to_local_root_and_not_to_another(ek_cert, local_ca, other_ca):
    """The EK chains through the issuing CA to its root, and not to a stranger's."""
    trusted = TrustStore()
    trusted.add_pem(local_ca.root_pem)
    chain = trusted.chain(ek_cert, load_certificates(local_ca.chain_pem))
    assert [c.subject for c in chain[1:]] == [
        local_ca.issuing_cert.subject,
        local_ca.root_cert.subject,
    ]
    stranger = TrustStore()
    stranger.add_pem(other_ca.root_pem)
    with pytest.raises(ChainError, match="no trusted issuer"):
        stranger.chain(ek_cert, load_certificates(local_ca.chain_pem))


def test_trust_store_from_a_directory(tmp_path, local_ca):
    """A directory of PEM files: self-signed ones become roots, others intermediates."""
    (tmp_path / "chain.pem").write_bytes(local_ca.chain_pem)
    store = TrustStore.from_paths([tmp_path])
    assert len(store.roots) == 1 and len(store.intermediates) == 1
