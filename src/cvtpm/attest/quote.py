"""The arithmetic of a TPM2_Quote: its signature and the digest of the quoted PCRs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cvtpm.tpm import _alg as alg
from cvtpm.tpm.structures import PcrSelection, Public, Signature


def signature_valid(public: Public, signature: Signature, message: bytes) -> bool:
    """True if `signature` over `message` (TPMS_ATTEST bytes) verifies with `public`."""
    try:
        key = public.public_key()
    except ValueError:
        return False
    hash_obj = alg.crypto_hash(signature.hash)
    try:
        if signature.sig_alg == alg.ALG_ECDSA and isinstance(
            key, ec.EllipticCurvePublicKey
        ):
            r = int.from_bytes(signature.ecc_r, "big")
            s = int.from_bytes(signature.ecc_s, "big")
            key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hash_obj))
        elif signature.sig_alg == alg.ALG_RSASSA and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature.rsa, message, padding.PKCS1v15(), hash_obj)
        elif signature.sig_alg == alg.ALG_RSAPSS and isinstance(key, rsa.RSAPublicKey):
            # The TPM picks the salt length (Part 1, B.7); accept what it used.
            pss = padding.PSS(mgf=padding.MGF1(hash_obj), salt_length=padding.PSS.AUTO)
            key.verify(signature.rsa, message, pss, hash_obj)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def pcr_digest(
    selection: tuple[PcrSelection, ...],
    values: Mapping[str, Mapping[int, bytes]],
    hash_name: str,
) -> bytes:
    """H(concatenated PCR values in selection order), as TPM2_Quote computes pcrDigest.

    Part 3, 18.4: the values are taken bank by bank in the order of the
    TPML_PCR_SELECTION and, inside a bank, by increasing PCR index; the hash is
    that of the signing scheme. A PCR missing from `values` raises KeyError.
    """
    h = hashlib.new(hash_name)
    for sel in selection:
        for pcr in sel.pcrs:
            h.update(values[sel.bank][pcr])
    return h.digest()
