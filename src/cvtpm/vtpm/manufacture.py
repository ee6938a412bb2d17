"""Manufacturing a vTPM: EKs and an AK, created in it and certified by the local CA."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization

from cvtpm.ca import LocalCa, TpmIdentity
from cvtpm.tpm.client import TpmClient
from cvtpm.tpm.structures import unmarshal_tpm2b_public
from cvtpm.tpm.templates import AK_HANDLES, EK_PROFILES, marshaled_template


def manufacture(
    tpm: TpmClient, ca: LocalCa, vtpm_uuid: str, ek_types: list[str], ak_type: str
) -> dict[str, str]:
    """Create EKs with certificates in NV, then the AK; returns registry fields."""
    identity = TpmIdentity(**vars(tpm.info()))

    # 1. One EK per key type from the profile's template, made persistent, its
    #    certificate in the profile's NV index, where tpm2_getekcertificate
    #    and every other tool look for it.
    ek_certs = {}
    for key_type in ek_types:
        profile = EK_PROFILES[key_type]
        public, _ = tpm.create_persistent_primary(
            marshaled_template("ek", key_type), profile.persistent_handle
        )
        cert = ca.issue_ek_certificate(public_key(public), identity)
        tpm.nv_write_ek_certificate(
            profile.cert_nv_index, cert.public_bytes(serialization.Encoding.DER)
        )
        ek_certs[key_type] = cert.public_bytes(serialization.Encoding.PEM).decode()

    # 2. The AK: a restricted signing key in the endorsement hierarchy, which
    #    the CA certifies on the same grounds as the EKs: it made the key
    #    itself, on the connection it made the EKs on, to a swtpm it started
    #    and that only it can reach (sockets in the root-only run directory).
    #    Credential activation (TPM 2.0 Part 1, section 24) proves that an AK
    #    shares a TPM with an EK to a party that did not create them; here it
    #    would prove nothing new, at a fifth of the cost of a vTPM. Verifiers
    #    that do not trust our AK certificates still activate (attest.service).
    ak_handle = AK_HANDLES[ak_type]
    ak_public, ak_name = tpm.create_persistent_primary(
        marshaled_template("ak", ak_type), ak_handle
    )
    ak_cert = ca.issue_ak_certificate(public_key(ak_public), vtpm_uuid)

    return {
        "banks": ",".join(tpm.active_banks()),
        "ek_certs_json": json.dumps(ek_certs),
        "ak_cert_pem": ak_cert.public_bytes(serialization.Encoding.PEM).decode(),
        "ak_name": ak_name.hex(),
    }


def public_key(public: bytes):
    """A `cryptography` public key from a marshaled TPM2B_PUBLIC."""
    return unmarshal_tpm2b_public(public).public_key()
