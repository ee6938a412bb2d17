"""Manufacturing a vTPM: EKs and an AK, created in it and certified by the local CA."""

from __future__ import annotations

import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cvtpm.ca import LocalCa, TpmIdentity
from cvtpm.tpm.client import TpmClient
from cvtpm.tpm.structures import unmarshal_tpm2b_public
from cvtpm.tpm.templates import AK_HANDLES, EK_PROFILES, marshaled_template


def manufacture(
    tpm: TpmClient, ca: LocalCa, vtpm_uuid: str, ek_types: list[str], ak_type: str
) -> dict[str, str]:
    """Create the EKs, then the AK, then put the EK certificates in NV;
    returns registry fields.

    The CA signs each certificate while the TPM works on a command that does
    not depend on it: signing and key derivation then take two CPUs, not one
    after the other.
    """
    identity = TpmIdentity(**vars(tpm.info()))

    # 1. One EK per key type from the profile's template, made persistent.
    ek_publics = {
        key_type: tpm.create_persistent_primary(
            marshaled_template("ek", key_type),
            EK_PROFILES[key_type].persistent_handle,
        )[0]
        for key_type in ek_types
    }

    # 2. The AK: a restricted signing key in the endorsement hierarchy, which
    #    the CA certifies on the same grounds as the EKs: it made the key
    #    itself, on the connection it made the EKs on, to a swtpm it started
    #    and that only it can reach (sockets in the root-only run directory).
    #    Credential activation (TPM 2.0 Part 1, section 24) proves that an AK
    #    shares a TPM with an EK to a party that did not create them; here it
    #    would prove nothing new, at a fifth of the cost of a vTPM. Verifiers
    #    that do not trust our AK certificates still activate (attest.service).
    #    The EK certificates are signed meanwhile.
    with tpm.overlap(_issue_ek_certificates, ca, ek_publics, identity) as signing:
        ak_public, ak_name = tpm.create_persistent_primary(
            marshaled_template("ak", ak_type), AK_HANDLES[ak_type]
        )
    ek_certs = signing.result()

    # 3. Each EK certificate in its profile's NV index, where
    #    tpm2_getekcertificate and every other tool look for it; the AK's
    #    certificate is signed meanwhile.
    with tpm.overlap(
        ca.issue_ak_certificate, public_key(ak_public), vtpm_uuid
    ) as signing:
        for key_type, cert in ek_certs.items():
            tpm.nv_write_ek_certificate(
                EK_PROFILES[key_type].cert_nv_index,
                cert.public_bytes(serialization.Encoding.DER),
            )
    ak_cert = signing.result()

    return {
        "banks": ",".join(tpm.active_banks()),
        "ek_certs_json": json.dumps({t: _pem(cert) for t, cert in ek_certs.items()}),
        "ak_cert_pem": _pem(ak_cert),
        "ak_name": ak_name.hex(),
    }


def _issue_ek_certificates(
    ca: LocalCa, publics: dict[str, bytes], identity: TpmIdentity
) -> dict[str, x509.Certificate]:
    return {
        key_type: ca.issue_ek_certificate(public_key(public), identity)
        for key_type, public in publics.items()
    }


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def public_key(public: bytes):
    """A `cryptography` public key from a marshaled TPM2B_PUBLIC."""
    return unmarshal_tpm2b_public(public).public_key()
