"""TPM2_MakeCredential in software: a secret only the TPM with an EK and an AK can read.

A verifier uses it to learn that an AK lives in the same TPM as an EK whose
certificate it trusts (TPM 2.0 Part 1, section 24 "Credential Protection"):
the secret is wrapped to the EK and bound to the AK's name, and the TPM's
TPM2_ActivateCredential only unwraps it when both keys are loaded in it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # CFB moved to the "decrepit" module in cryptography 47; the TPM still uses it.
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from cvtpm.tpm import _alg as alg
from cvtpm.tpm._cursor import marshal_tpm2b, marshal_u16, marshal_u32
from cvtpm.tpm.structures import Public, unmarshal_tpmt_public


def kdfa(
    hash_name: str,
    key: bytes,
    label: bytes,
    context_u: bytes,
    context_v: bytes,
    bits: int,
) -> bytes:
    """KDFa: SP 800-108 counter-mode KDF with HMAC (Part 1, section 11.4.10.2)."""
    label = label if label.endswith(b"\0") else label + b"\0"
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        message = (
            marshal_u32(counter) + label + context_u + context_v + marshal_u32(bits)
        )
        out += hmac.new(key, message, hash_name).digest()
        counter += 1
    return _truncate(out, bits)


def kdfe(
    hash_name: str, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int
) -> bytes:
    """KDFe: SP 800-56A concatenation KDF (Part 1, section 11.4.10.3)."""
    label = label if label.endswith(b"\0") else label + b"\0"
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hashlib.new(
            hash_name, marshal_u32(counter) + z + label + party_u + party_v
        ).digest()
        counter += 1
    return _truncate(out, bits)


def _truncate(data: bytes, bits: int) -> bytes:
    """The first `bits` bits, leading bits of the first byte masked as Part 1 says."""
    size = (bits + 7) // 8
    data = bytearray(data[:size])
    if bits % 8:
        data[0] &= (1 << (bits % 8)) - 1
    return bytes(data)


def _seed(ek: Public) -> tuple[bytes, bytes]:
    """A fresh seed and its encryption to the EK (Part 1, 24.4 RSA; 24.5 ECC)."""
    name_alg = ek.name_alg
    size = alg.HASH_SIZES[name_alg]
    key = ek.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        # The label is "IDENTITY" with its terminating zero (Part 1, B.10.3).
        seed = os.urandom(size)
        hash_obj = alg.crypto_hash(name_alg)
        encrypted = key.encrypt(
            seed,
            padding.OAEP(
                mgf=padding.MGF1(hash_obj), algorithm=hash_obj, label=b"IDENTITY\0"
            ),
        )
        return seed, encrypted

    # ECC: one-pass Diffie-Hellman with an ephemeral key; the secret sent is
    # the ephemeral public point as a TPMS_ECC_POINT (Part 1, C.6.4).
    ephemeral = ec.generate_private_key(key.curve)
    z = ephemeral.exchange(ec.ECDH(), key)
    coord = (key.curve.key_size + 7) // 8
    numbers = ephemeral.public_key().public_numbers()
    x_u = numbers.x.to_bytes(coord, "big")
    y_u = numbers.y.to_bytes(coord, "big")
    x_v = key.public_numbers().x.to_bytes(coord, "big")
    seed = kdfe(name_alg, z, b"IDENTITY", x_u, x_v, size * 8)
    return seed, marshal_tpm2b(x_u) + marshal_tpm2b(y_u)


def make_credential(ek: Public, ak_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """Wrap `secret` (at most one digest long) to the EK, bound to the AK's name.

    Returns the bodies (without their UINT16 size) of the TPM2B_ID_OBJECT and the
    TPM2B_ENCRYPTED_SECRET that TPM2_ActivateCredential takes.
    """
    if ek.name_alg is None:
        raise ValueError("the EK has no name algorithm")
    if ek.symmetric[0] != alg.ALG_AES or ek.symmetric[2] != alg.ALG_CFB:
        raise ValueError(
            "only EKs with AES-CFB as their symmetric algorithm are supported"
        )
    if len(secret) > alg.HASH_SIZES[ek.name_alg]:
        raise ValueError(
            "the secret may be at most one digest of the EK's name algorithm"
        )
    seed, encrypted_seed = _seed(ek)

    # Part 1, 24.4: symKey = KDFa(nameAlg, seed, "STORAGE", name, NULL, keyBits);
    # the credential is a TPM2B_DIGEST encrypted in CFB mode with a zero IV.
    sym_key = kdfa(ek.name_alg, seed, b"STORAGE", ak_name, b"", ek.symmetric[1])
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\0" * 16)).encryptor()
    enc_identity = encryptor.update(marshal_tpm2b(secret)) + encryptor.finalize()

    # Part 1, 24.5: HMACkey = KDFa(nameAlg, seed, "INTEGRITY", NULL, NULL, bits),
    # outerHMAC = HMAC(HMACkey, encIdentity || name).
    digest_bits = alg.HASH_SIZES[ek.name_alg] * 8
    hmac_key = kdfa(ek.name_alg, seed, b"INTEGRITY", b"", b"", digest_bits)
    outer_hmac = hmac.new(hmac_key, enc_identity + ak_name, ek.name_alg).digest()
    id_object = marshal_tpm2b(outer_hmac) + enc_identity
    return id_object, encrypted_seed


# TCG EK Credential Profile 2.x, B.3.3 templates L-1 (RSA 2048) and L-2 (ECC
# NIST P-256): fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy,
# restricted, decrypt; authPolicy PolicySecret(TPM_RH_ENDORSEMENT); AES-128-CFB.
EK_ATTRIBUTES = 0x000300B2
EK_POLICY = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)


def ek_public_from_certificate(cert: x509.Certificate) -> Public:
    """The EK public area a TPM creates from the profile's low-range template.

    It is rebuilt from the certificate's key, so MakeCredential can target an
    EK known only by its certificate.
    """
    key = cert.public_key()
    head = (
        marshal_u16(alg.HASH_IDS["sha256"])
        + marshal_u32(EK_ATTRIBUTES)
        + marshal_tpm2b(EK_POLICY)
        + marshal_u16(alg.ALG_AES)
        + marshal_u16(128)
        + marshal_u16(alg.ALG_CFB)
        + marshal_u16(alg.ALG_NULL)  # scheme
    )
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        size = (key.key_size + 7) // 8
        exponent = 0 if numbers.e == 65537 else numbers.e
        body = (
            marshal_u16(alg.ALG_RSA)
            + head
            + marshal_u16(key.key_size)
            + marshal_u32(exponent)
            + marshal_tpm2b(numbers.n.to_bytes(size, "big"))
        )
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in alg.CURVE_IDS:
        numbers = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        body = (
            marshal_u16(alg.ALG_ECC)
            + head
            + marshal_u16(alg.CURVE_IDS[key.curve.name])
            + marshal_u16(alg.ALG_NULL)  # kdf
            + marshal_tpm2b(numbers.x.to_bytes(size, "big"))
            + marshal_tpm2b(numbers.y.to_bytes(size, "big"))
        )
    else:
        raise ValueError("the EK certificate holds neither an RSA nor an ECC key")
    return unmarshal_tpmt_public(body)
