"""Software MakeCredential is what a real TPM's ActivateCredential expects."""

from __future__ import annotations

import os

import pytest

from cvtpm.attest.credential import kdfa, make_credential
from cvtpm.errors import TpmError
from cvtpm.tpm.structures import tpm2_name, unmarshal_tpmt_public
from tests.attest.conftest import make_vtpm


def test_kdfa_matches_a_hand_computed_block():
    """KDFa's first block is HMAC(key, counter || label\\0 || contexts || bits)."""
    import hashlib
    import hmac

    message = b"\0\0\0\1STORAGE\0" + b"name" + b"\0\0\0\x80"
    expected = hmac.new(b"seed", message, hashlib.sha256).digest()[:16]
    assert kdfa("sha256", b"seed", b"STORAGE", b"name", b"", 128) == expected


@pytest.mark.swtpm
@pytest.mark.parametrize("key_type", ["ecc", "rsa"])
def test_activate_credential_recovers_the_secret(swtpm_dir, local_ca, key_type):
    """The vTPM's ActivateCredential with its EK and AK recovers our secret."""
    vtpm = make_vtpm(swtpm_dir, local_ca, key_type=key_type)
    ek = unmarshal_tpmt_public(vtpm.ek_public)
    secret = os.urandom(32)
    blob, encrypted = make_credential(ek, tpm2_name(vtpm.ak_public), secret)
    with vtpm.client() as tpm:
        recovered = tpm.activate_credential(
            vtpm.ak_handle, vtpm.ek_handle, blob, encrypted
        )
    assert recovered == secret


@pytest.mark.swtpm
def test_credential_for_another_ak_name_is_refused(vtpm):
    """A credential bound to another key's name cannot be activated with this AK."""
    ek = unmarshal_tpmt_public(vtpm.ek_public)
    wrong_name = b"\x00\x0b" + bytes(32)
    blob, encrypted = make_credential(ek, wrong_name, b"secret")
    with vtpm.client() as tpm, pytest.raises(TpmError):
        tpm.activate_credential(vtpm.ak_handle, vtpm.ek_handle, blob, encrypted)


@pytest.mark.swtpm
def test_the_connection_goes_on_after_an_activation(swtpm_dir, local_ca):
    """ESAPI has the TPM to itself for the activation; our commands resume after."""
    vtpm = make_vtpm(swtpm_dir, local_ca)
    ek = unmarshal_tpmt_public(vtpm.ek_public)
    blob, encrypted = make_credential(ek, tpm2_name(vtpm.ak_public), b"s" * 32)
    with vtpm.client() as tpm:
        before = tpm.pcr_read(10, ["sha256"])
        tpm.activate_credential(vtpm.ak_handle, vtpm.ek_handle, blob, encrypted)
        tpm.pcr_extend(10, {"sha256": b"\1" * 32})
        assert tpm.pcr_read(10, ["sha256"]) != before
