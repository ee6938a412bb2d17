"""Decoders for the TPM structures a verifier reads: attestations, signatures, keys.

Everything here follows TPM 2.0 Library Part 2 ("Structures"): integers are
big-endian, sized buffers are TPM2B (a UINT16 size first), and a structure must
consume its input exactly. Malformed input raises ParseError with the offset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cvtpm.tpm import _alg as alg
from cvtpm.tpm._cursor import Cursor, marshal_u16

TPM_GENERATED_VALUE = 0xFF544347  # Part 2, 6.2: "\xffTCG"
TPM_ST_ATTEST_CERTIFY = 0x8017
TPM_ST_ATTEST_QUOTE = 0x8018

# Part 2, 10.6.1: a selection bitmap holds at most PCR_SELECT_MAX bytes; the
# reference implementation uses 32 PCRs (4 bytes); we allow a little headroom.
PCR_SELECT_MAX = 8
# Part 2, 10.6.2: at most one selection per implemented hash (HASH_COUNT).
HASH_COUNT_MAX = 16


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank and the PCR indices selected in it."""

    bank: str
    pcrs: tuple[int, ...]


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO (Part 2, 10.11.1): clock and the reset/restart counters."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class QuoteInfo:
    """TPMS_QUOTE_INFO (Part 2, 10.12.1): the PCR selection and its values' digest."""

    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes


@dataclass(frozen=True)
class CertifyInfo:
    """TPMS_CERTIFY_INFO (Part 2, 10.12.3): the name of the certified object."""

    name: bytes
    qualified_name: bytes


@dataclass(frozen=True)
class Attest:
    """TPMS_ATTEST (Part 2, 10.12.12): what a TPM signs in a quote or certify."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    attested: QuoteInfo | CertifyInfo


@dataclass(frozen=True)
class Signature:
    """TPMT_SIGNATURE (Part 2, 11.3.4) for RSASSA, RSAPSS and ECDSA."""

    sig_alg: int
    hash: str
    rsa: bytes = b""
    ecc_r: bytes = b""
    ecc_s: bytes = b""


@dataclass(frozen=True)
class Public:
    """TPMT_PUBLIC (Part 2, 12.2.4) of an RSA or ECC key, with its marshaled form."""

    type: int
    name_alg: str | None
    object_attributes: int
    auth_policy: bytes
    symmetric: tuple[int, int, int]  # (algorithm, keyBits, mode); NULL: (0x10, 0, 0)
    scheme: tuple[int, str | None]  # (scheme, hash) ; NULL: (0x10, None)
    key_bits: int  # RSA modulus bits; 0 for ECC
    exponent: int  # RSA public exponent; 0 for ECC
    curve: int  # TPM_ECC_CURVE; 0 for RSA
    kdf: tuple[int, str | None]
    unique: bytes  # RSA modulus, or x for ECC
    unique_y: bytes  # ECC y; empty for RSA
    raw: bytes

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a `cryptography` public key; ValueError if it is not valid."""
        if self.type == alg.ALG_RSA:
            n = int.from_bytes(self.unique, "big")
            return rsa.RSAPublicNumbers(self.exponent, n).public_key()
        curve = alg.CURVES[self.curve]()
        point = b"\x04" + self.unique + self.unique_y
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)

    def name(self) -> bytes:
        """The TPM name: nameAlg, then H_nameAlg(TPMT_PUBLIC) (Part 1, 16)."""
        return tpm2_name(self.raw)


def _hash_alg(cur: Cursor, field: str, allow_null: bool = False) -> str | None:
    """A TPMI_ALG_HASH, as its name (None for TPM_ALG_NULL where allowed)."""
    at = cur.offset
    value = cur.u16(field)
    if value == alg.ALG_NULL and allow_null:
        return None
    if value not in alg.HASH_NAMES:
        raise cur.fail(f"{field} 0x{value:04x} is not a hash algorithm", at)
    return alg.HASH_NAMES[value]


def _pcr_selection(cur: Cursor, index: int) -> PcrSelection:
    """TPMS_PCR_SELECTION (Part 2, 10.6.2): hash, sizeofSelect, then the bitmap."""
    bank = _hash_alg(cur, f"pcrSelections[{index}].hash")
    at = cur.offset
    size = cur.u8(f"pcrSelections[{index}].sizeofSelect")
    if size > PCR_SELECT_MAX:
        raise cur.fail(f"sizeofSelect {size} exceeds {PCR_SELECT_MAX}", at)
    bitmap = cur.take(size, f"pcrSelections[{index}].pcrSelect")
    # Part 2, 10.6.1: bit j of octet i selects PCR 8*i + j.
    pcrs = tuple(
        i * 8 + j for i, octet in enumerate(bitmap) for j in range(8) if octet >> j & 1
    )
    return PcrSelection(bank, pcrs)


def read_pcr_selections(cur: Cursor) -> tuple[PcrSelection, ...]:
    """TPML_PCR_SELECTION (Part 2, 10.9.7): a UINT32 count, then the selections."""
    at = cur.offset
    count = cur.u32("pcrSelections.count")
    if count > HASH_COUNT_MAX:
        raise cur.fail(f"pcrSelections.count {count} exceeds {HASH_COUNT_MAX}", at)
    return tuple(_pcr_selection(cur, i) for i in range(count))


def unmarshal_tpml_pcr_selection(data: bytes) -> tuple[PcrSelection, ...]:
    """Decode a marshaled TPML_PCR_SELECTION."""
    cur = Cursor(data, "TPML_PCR_SELECTION")
    selections = read_pcr_selections(cur)
    cur.done()
    return selections


def marshal_tpml_pcr_selection(selections: list[PcrSelection]) -> bytes:
    """Encode a TPML_PCR_SELECTION with 3-byte bitmaps (enough for PCRs 0-23)."""
    out = len(selections).to_bytes(4, "big")
    for selection in selections:
        bitmap = bytearray(max(3, (max(selection.pcrs, default=0) // 8) + 1))
        for pcr in selection.pcrs:
            bitmap[pcr // 8] |= 1 << (pcr % 8)
        out += marshal_u16(alg.HASH_IDS[selection.bank]) + bytes([len(bitmap)]) + bitmap
    return out


def _clock_info(cur: Cursor) -> ClockInfo:
    """TPMS_CLOCK_INFO (Part 2, 10.11.1)."""
    clock = cur.u64("clockInfo.clock")
    reset_count = cur.u32("clockInfo.resetCount")
    restart_count = cur.u32("clockInfo.restartCount")
    at = cur.offset
    safe = cur.u8("clockInfo.safe")
    if safe not in (0, 1):  # TPMI_YES_NO, Part 2, 9.2
        raise cur.fail(f"clockInfo.safe must be 0 or 1, not {safe}", at)
    return ClockInfo(clock, reset_count, restart_count, bool(safe))


def unmarshal_tpms_attest(data: bytes) -> Attest:
    """Decode a TPMS_ATTEST (the body of a TPM2B_ATTEST) of a quote or certify."""
    cur = Cursor(data, "TPMS_ATTEST")
    magic = cur.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise cur.fail(f"magic 0x{magic:08x} is not TPM_GENERATED_VALUE", 0)
    at = cur.offset
    st = cur.u16("type")
    qualified_signer = cur.tpm2b("qualifiedSigner", max_size=2 + 64)
    extra_data = cur.tpm2b("extraData", max_size=64)
    clock_info = _clock_info(cur)
    firmware_version = cur.u64("firmwareVersion")

    # TPMU_ATTEST is selected by `type` (Part 2, 10.12.11).
    attested: QuoteInfo | CertifyInfo
    if st == TPM_ST_ATTEST_QUOTE:
        selections = read_pcr_selections(cur)
        attested = QuoteInfo(selections, cur.tpm2b("pcrDigest", max_size=64))
    elif st == TPM_ST_ATTEST_CERTIFY:
        name = cur.tpm2b("certify.name", max_size=2 + 64)
        attested = CertifyInfo(
            name, cur.tpm2b("certify.qualifiedName", max_size=2 + 64)
        )
    else:
        raise cur.fail(f"attestation type 0x{st:04x} is not supported", at)
    cur.done()
    return Attest(
        magic, st, qualified_signer, extra_data, clock_info, firmware_version, attested
    )


def unmarshal_tpmt_signature(data: bytes) -> Signature:
    """Decode a TPMT_SIGNATURE of scheme RSASSA, RSAPSS or ECDSA."""
    cur = Cursor(data, "TPMT_SIGNATURE")
    sig_alg = cur.u16("sigAlg")
    if sig_alg in (alg.ALG_RSASSA, alg.ALG_RSAPSS):
        hash_name = _hash_alg(cur, "signature.hash")
        signature = Signature(sig_alg, hash_name, rsa=cur.tpm2b("signature.sig", 512))
    elif sig_alg == alg.ALG_ECDSA:
        hash_name = _hash_alg(cur, "signature.hash")
        r = cur.tpm2b("signature.signatureR", max_size=66)
        s = cur.tpm2b("signature.signatureS", max_size=66)
        signature = Signature(sig_alg, hash_name, ecc_r=r, ecc_s=s)
    else:
        raise cur.fail(f"signature algorithm 0x{sig_alg:04x} is not supported", 0)
    cur.done()
    return signature


def _symmetric(cur: Cursor) -> tuple[int, int, int]:
    """TPMT_SYM_DEF_OBJECT (Part 2, 11.1.7): algorithm, keyBits and mode unless NULL."""
    algorithm = cur.u16("parameters.symmetric.algorithm")
    if algorithm == alg.ALG_NULL:
        return (algorithm, 0, 0)
    at = cur.offset
    if algorithm not in (alg.ALG_AES, alg.ALG_SM4, alg.ALG_CAMELLIA):
        raise cur.fail(
            f"symmetric algorithm 0x{algorithm:04x} is not supported", at - 2
        )
    return (algorithm, cur.u16("symmetric.keyBits"), cur.u16("symmetric.mode"))


def _scheme(cur: Cursor, field: str) -> tuple[int, str | None]:
    """TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME: scheme, then its details."""
    at = cur.offset
    scheme = cur.u16(f"{field}.scheme")
    if scheme == alg.ALG_NULL or scheme == alg.ALG_RSAES:  # details: TPMS_EMPTY
        return (scheme, None)
    if scheme == alg.ALG_ECDAA:  # TPMS_SCHEME_ECDAA: hashAlg, count
        hash_name = _hash_alg(cur, f"{field}.details.hashAlg")
        cur.u16(f"{field}.details.count")
        return (scheme, hash_name)
    if scheme in alg.HASH_SCHEMES:
        return (scheme, _hash_alg(cur, f"{field}.details.hashAlg"))
    raise cur.fail(f"{field} 0x{scheme:04x} is not supported", at)


def _public(cur: Cursor) -> Public:
    """TPMT_PUBLIC of an RSA or ECC key, read from `cur`."""
    start = cur.offset
    key_type = cur.u16("type")
    if key_type not in (alg.ALG_RSA, alg.ALG_ECC):
        raise cur.fail(f"key type 0x{key_type:04x} is not RSA or ECC", start)
    name_alg = _hash_alg(cur, "nameAlg", allow_null=True)
    attributes = cur.u32("objectAttributes")
    auth_policy = cur.tpm2b("authPolicy", max_size=64)
    symmetric = _symmetric(cur)
    scheme = _scheme(cur, "parameters.scheme")

    if key_type == alg.ALG_RSA:
        at = cur.offset
        key_bits = cur.u16("parameters.keyBits")
        if key_bits not in (1024, 2048, 3072, 4096):
            raise cur.fail(f"RSA keyBits {key_bits} is not supported", at)
        exponent = cur.u32("parameters.exponent") or 65537  # 0 means 2^16+1 (11.2.4.5)
        unique = cur.tpm2b("unique.rsa", max_size=512)
        if len(unique) * 8 != key_bits:
            raise cur.fail(f"modulus is {len(unique)} bytes for keyBits {key_bits}")
        curve, kdf, unique_y = 0, (alg.ALG_NULL, None), b""
    else:
        at = cur.offset
        curve = cur.u16("parameters.curveID")
        if curve not in alg.CURVES:
            raise cur.fail(f"curve 0x{curve:04x} is not supported", at)
        kdf = _scheme(cur, "parameters.kdf")
        size = alg.CURVES[curve].key_size // 8 + (
            1 if curve == alg.ECC_NIST_P521 else 0
        )
        unique = cur.tpm2b("unique.ecc.x", max_size=66)
        unique_y = cur.tpm2b("unique.ecc.y", max_size=66)
        if len(unique) != size or len(unique_y) != size:
            raise cur.fail(f"ECC point coordinates must be {size} bytes")
        key_bits, exponent = 0, 0

    raw = cur.data[start : cur.offset]
    return Public(
        key_type,
        name_alg,
        attributes,
        auth_policy,
        symmetric,
        scheme,
        key_bits,
        exponent,
        curve,
        kdf,
        unique,
        unique_y,
        raw,
    )


def unmarshal_tpmt_public(data: bytes) -> Public:
    """Decode a marshaled TPMT_PUBLIC of an RSA or ECC key."""
    cur = Cursor(data, "TPMT_PUBLIC")
    public = _public(cur)
    cur.done()
    return public


def unmarshal_tpm2b_public(data: bytes) -> Public:
    """Decode a TPM2B_PUBLIC: a UINT16 size, then exactly that TPMT_PUBLIC."""
    cur = Cursor(data, "TPM2B_PUBLIC")
    size = cur.u16("size")
    public = _public(cur)
    if cur.offset - 2 != size:
        raise cur.fail(f"size says {size} bytes, TPMT_PUBLIC took {cur.offset - 2}", 0)
    cur.done()
    return public


def tpm2_name(tpmt_public: bytes) -> bytes:
    """The name of an object: UINT16 nameAlg || H_nameAlg(marshaled TPMT_PUBLIC)."""
    cur = Cursor(tpmt_public, "TPMT_PUBLIC")
    cur.u16("type")
    name_alg = _hash_alg(cur, "nameAlg")
    digest = hashlib.new(name_alg, tpmt_public).digest()
    return marshal_u16(alg.HASH_IDS[name_alg]) + digest
