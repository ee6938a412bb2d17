"""Key templates: the TCG EK Credential Profile's EKs and cvtpm's attestation key.

The EK templates are the profile's "low range" templates (TCG EK Credential
Profile for TPM Family 2.0, v2.5, section 2.2.1.4, templates L-1 and L-2), so
an EK made from them has the same public key as any other tool would recreate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tpm2_pytss.constants import (
    TPM2_ALG,
    TPM2_ECC,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPMS_ECC_POINT,
    TPMT_PUBLIC,
)

# PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the authPolicy of the L-1 and
# L-2 templates (EK Credential Profile v2.5, section B.6.2).
POLICY_A_SHA256 = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)

_EK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.ADMINWITHPOLICY
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)

_AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)


@dataclass(frozen=True)
class EkProfile:
    """Where the profile puts one EK type: its persistent handle and NV indices."""

    key_type: str
    persistent_handle: int
    cert_nv_index: int


# TCG EK Credential Profile v2.5, section 2.2.1.4 (NV indices) and TCG TPM v2.0
# Provisioning Guidance, section 7.8 (persistent handles).
EK_PROFILES = {
    "rsa": EkProfile("rsa", 0x81010001, 0x01C00002),
    "ecc": EkProfile("ecc", 0x81010002, 0x01C0000A),
}

# cvtpm's choice, in the owner range the Provisioning Guidance leaves to users.
AK_HANDLE = 0x81010003
AK_HANDLES = {"ecc": 0x81010003, "rsa": 0x81010004}


def ek_template(key_type: str) -> TPM2B_PUBLIC:
    """The L-1 (RSA-2048) or L-2 (ECC NIST P-256) EK template."""
    public = TPMT_PUBLIC(nameAlg=TPM2_ALG.SHA256, objectAttributes=_EK_ATTRIBUTES)
    public.authPolicy = POLICY_A_SHA256

    if key_type == "rsa":
        public.type = TPM2_ALG.RSA
        public.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG.AES
        public.parameters.rsaDetail.symmetric.keyBits.aes = 128
        public.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG.CFB
        public.parameters.rsaDetail.scheme.scheme = TPM2_ALG.NULL
        public.parameters.rsaDetail.keyBits = 2048
        public.parameters.rsaDetail.exponent = 0
        # The profile fills `unique` with 256 zero bytes for L-1.
        public.unique.rsa = b"\0" * 256
    elif key_type == "ecc":
        public.type = TPM2_ALG.ECC
        public.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.AES
        public.parameters.eccDetail.symmetric.keyBits.aes = 128
        public.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG.CFB
        public.parameters.eccDetail.scheme.scheme = TPM2_ALG.NULL
        public.parameters.eccDetail.curveID = TPM2_ECC.NIST_P256
        public.parameters.eccDetail.kdf.scheme = TPM2_ALG.NULL
        # ... and x and y with 32 zero bytes each for L-2.
        public.unique.ecc = TPMS_ECC_POINT(x=b"\0" * 32, y=b"\0" * 32)
    else:
        raise ValueError(f"unknown EK type {key_type!r}; expected 'ecc' or 'rsa'")

    return TPM2B_PUBLIC(publicArea=public)


def ak_template(key_type: str = "ecc") -> TPM2B_PUBLIC:
    """A restricted signing key for quotes: ECDSA P-256 or RSASSA-2048, SHA-256."""
    public = TPMT_PUBLIC(nameAlg=TPM2_ALG.SHA256, objectAttributes=_AK_ATTRIBUTES)

    if key_type == "ecc":
        public.type = TPM2_ALG.ECC
        public.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
        public.parameters.eccDetail.scheme.scheme = TPM2_ALG.ECDSA
        public.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
        public.parameters.eccDetail.curveID = TPM2_ECC.NIST_P256
        public.parameters.eccDetail.kdf.scheme = TPM2_ALG.NULL
    elif key_type == "rsa":
        public.type = TPM2_ALG.RSA
        public.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG.NULL
        public.parameters.rsaDetail.scheme.scheme = TPM2_ALG.RSASSA
        public.parameters.rsaDetail.scheme.details.rsassa.hashAlg = TPM2_ALG.SHA256
        public.parameters.rsaDetail.keyBits = 2048
        public.parameters.rsaDetail.exponent = 0
    else:
        raise ValueError(f"unknown AK type {key_type!r}; expected 'ecc' or 'rsa'")

    return TPM2B_PUBLIC(publicArea=public)


@functools.cache
def marshaled_template(role: str, key_type: str) -> bytes:
    """The "ek" or "ak" template as a marshaled TPM2B_PUBLIC, built once.

    Building a template through tpm2-pytss's types takes about 0.2 ms, and
    every vTPM's manufacture needs two.
    """
    build = {"ek": ek_template, "ak": ak_template}[role]
    return build(key_type).marshal()
