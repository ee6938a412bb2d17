"""Manufacturing a vTPM: EKs certified by the local CA, an AK proven by activation."""

from __future__ import annotations

import json
import secrets

from cryptography.hazmat.primitives import serialization
from tpm2_pytss.types import TPM2B_DIGEST, TPM2B_NAME
from tpm2_pytss.utils import make_credential

from cvtpm.ca import LocalCa, TpmIdentity
from cvtpm.errors import TpmError
from cvtpm.tpm.client import TpmClient
from cvtpm.tpm.templates import AK_HANDLES, EK_PROFILES, ak_template, ek_template


def manufacture(
    tpm: TpmClient, ca: LocalCa, vtpm_uuid: str, ek_types: list[str], ak_type: str
) -> dict[str, str]:
    """Create EKs with certificates in NV, then the AK; returns registry fields."""
    identity = TpmIdentity(**vars(tpm.info()))

    # 1. One EK per key type from the profile's template, made persistent, its
    #    certificate in the profile's NV index, where tpm2_getekcertificate
    #    and every other tool look for it.
    ek_certs = {}
    ek_publics = {}
    for key_type in ek_types:
        profile = EK_PROFILES[key_type]
        public = tpm.create_persistent_primary(
            ek_template(key_type), profile.persistent_handle
        )
        ek_publics[key_type] = public
        cert = ca.issue_ek_certificate(public_key(public), identity)
        tpm.nv_write_ek_certificate(
            profile.cert_nv_index, cert.public_bytes(serialization.Encoding.DER)
        )
        ek_certs[key_type] = cert.public_bytes(serialization.Encoding.PEM).decode()

    # 2. The AK: a restricted signing key in the endorsement hierarchy.
    ak_handle = AK_HANDLES[ak_type]
    ak_public = tpm.create_persistent_primary(ak_template(ak_type), ak_handle)
    _, ak_name = tpm.read_public(ak_handle)

    # 3. Credential activation (TPM 2.0 Part 1, section 24): a secret sealed to
    #    the EK and bound to the AK's name comes back only if both keys live in
    #    this TPM. Only then does the CA certify the AK.
    activating = "ecc" if "ecc" in ek_types else ek_types[0]
    challenge = secrets.token_bytes(32)
    blob, secret = make_credential(
        ek_publics[activating], TPM2B_DIGEST(challenge), TPM2B_NAME(ak_name)
    )
    answer = tpm.activate_credential(
        ak_handle, EK_PROFILES[activating].persistent_handle, bytes(blob), bytes(secret)
    )
    if answer != challenge:
        raise TpmError("credential activation of the AK failed: not the EK's TPM")
    ak_cert = ca.issue_ak_certificate(public_key(ak_public), vtpm_uuid)

    return {
        "banks": ",".join(tpm.active_banks()),
        "ek_certs_json": json.dumps(ek_certs),
        "ak_cert_pem": ak_cert.public_bytes(serialization.Encoding.PEM).decode(),
        "ak_name": ak_name.hex(),
    }


def public_key(public):
    """A `cryptography` public key from a TPM2B_PUBLIC."""
    return serialization.load_der_public_key(public.publicArea.to_der())
