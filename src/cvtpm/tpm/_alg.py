"""TPM algorithm and curve identifiers (TPM 2.0 Part 2, 6.3 and 6.4)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# TPM_ALG_ID values, Part 2 table 9.
ALG_RSA = 0x0001
ALG_SHA1 = 0x0004
ALG_HMAC = 0x0005
ALG_AES = 0x0006
ALG_MGF1 = 0x0007
ALG_KEYEDHASH = 0x0008
ALG_XOR = 0x000A
ALG_SHA256 = 0x000B
ALG_SHA384 = 0x000C
ALG_SHA512 = 0x000D
ALG_NULL = 0x0010
ALG_SM3_256 = 0x0012
ALG_SM4 = 0x0013
ALG_RSASSA = 0x0014
ALG_RSAES = 0x0015
ALG_RSAPSS = 0x0016
ALG_OAEP = 0x0017
ALG_ECDSA = 0x0018
ALG_ECDH = 0x0019
ALG_ECDAA = 0x001A
ALG_SM2 = 0x001B
ALG_ECSCHNORR = 0x001C
ALG_ECMQV = 0x001D
ALG_KDF1_SP800_56A = 0x0020
ALG_KDF2 = 0x0021
ALG_KDF1_SP800_108 = 0x0022
ALG_ECC = 0x0023
ALG_SYMCIPHER = 0x0025
ALG_CAMELLIA = 0x0026
ALG_SHA3_256 = 0x0027
ALG_SHA3_384 = 0x0028
ALG_SHA3_512 = 0x0029
ALG_CFB = 0x0043

HASH_NAMES = {
    ALG_SHA1: "sha1",
    ALG_SHA256: "sha256",
    ALG_SHA384: "sha384",
    ALG_SHA512: "sha512",
    ALG_SM3_256: "sm3_256",
    ALG_SHA3_256: "sha3_256",
    ALG_SHA3_384: "sha3_384",
    ALG_SHA3_512: "sha3_512",
}
HASH_IDS = {name: alg for alg, name in HASH_NAMES.items()}
HASH_SIZES = {
    "sha1": 20,
    "sha256": 32,
    "sha384": 48,
    "sha512": 64,
    "sm3_256": 32,
    "sha3_256": 32,
    "sha3_384": 48,
    "sha3_512": 64,
}

_HASHES = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3_256": hashes.SHA3_256,
    "sha3_384": hashes.SHA3_384,
    "sha3_512": hashes.SHA3_512,
}

# TPM_ECC_CURVE values, Part 2 table 10; only curves `cryptography` implements.
ECC_NIST_P192 = 0x0001
ECC_NIST_P224 = 0x0002
ECC_NIST_P256 = 0x0003
ECC_NIST_P384 = 0x0004
ECC_NIST_P521 = 0x0005
CURVES: dict[int, type[ec.EllipticCurve]] = {
    ECC_NIST_P192: ec.SECP192R1,
    ECC_NIST_P224: ec.SECP224R1,
    ECC_NIST_P256: ec.SECP256R1,
    ECC_NIST_P384: ec.SECP384R1,
    ECC_NIST_P521: ec.SECP521R1,
}
CURVE_IDS = {curve.name: alg for alg, curve in CURVES.items()}

# Schemes whose TPMU_ASYM_SCHEME details are a TPMS_SCHEME_HASH (Part 2, 11.2.3).
HASH_SCHEMES = frozenset(
    {ALG_RSASSA, ALG_RSAPSS, ALG_OAEP, ALG_ECDSA, ALG_ECDH, ALG_SM2, ALG_ECSCHNORR}
    | {ALG_ECMQV, ALG_KDF1_SP800_56A, ALG_KDF2, ALG_KDF1_SP800_108, ALG_MGF1}
)


def hash_name(alg: int) -> str:
    """The lowercase name of a TPM hash algorithm; ValueError for other algorithms."""
    try:
        return HASH_NAMES[alg]
    except KeyError:
        raise ValueError(f"not a hash algorithm: 0x{alg:04x}") from None


def crypto_hash(name: str) -> hashes.HashAlgorithm:
    """The `cryptography` hash object for a bank name ("sha256", ...)."""
    try:
        return _HASHES[name]()
    except KeyError:
        raise ValueError(f"hash algorithm {name} is not supported here") from None
