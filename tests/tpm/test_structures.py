"""The TPM structure decoders against tpm2-pytss's marshaling, and fuzzed by damage."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_ST
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CERTIFY_INFO,
    TPMS_CLOCK_INFO,
    TPMS_ECC_POINT,
    TPMS_QUOTE_INFO,
    TPMS_SIGNATURE_ECC,
    TPMS_SIGNATURE_RSA,
    TPMT_PUBLIC,
    TPMT_SIGNATURE,
    TPMU_ATTEST,
)

from cvtpm.errors import ParseError
from cvtpm.tpm import structures
from cvtpm.tpm._alg import ALG_ECDSA, ALG_RSASSA
from cvtpm.tpm.templates import ak_template, ek_template

EC_X = bytes.fromhex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296")
EC_Y = bytes.fromhex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")


def quote_attest(selection: str = "sha1:10+sha256:10") -> bytes:
    """A marshaled TPMS_ATTEST of a quote, as tpm2-pytss encodes it."""
    attest = TPMS_ATTEST(
        magic=structures.TPM_GENERATED_VALUE,
        type=TPM2_ST.ATTEST_QUOTE,
        qualifiedSigner=b"\x00\x0b" + bytes(range(32)),
        extraData=b"nonce-0123456789",
        clockInfo=TPMS_CLOCK_INFO(clock=123456, resetCount=3, restartCount=7, safe=1),
        firmwareVersion=0x2019080100000000,
        attested=TPMU_ATTEST(
            quote=TPMS_QUOTE_INFO(
                pcrSelect=TPML_PCR_SELECTION.parse(selection),
                pcrDigest=hashlib.sha256(b"pcrs").digest(),
            )
        ),
    )
    return attest.marshal()


def ecdsa_signature() -> bytes:
    """A marshaled ECDSA TPMT_SIGNATURE."""
    sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    sig.signature.ecdsa = TPMS_SIGNATURE_ECC(
        hash=TPM2_ALG.SHA256, signatureR=b"\x01" * 32, signatureS=b"\x02" * 32
    )
    return sig.marshal()


def rsassa_signature() -> bytes:
    """A marshaled RSASSA TPMT_SIGNATURE."""
    sig = TPMT_SIGNATURE(sigAlg=TPM2_ALG.RSASSA)
    sig.signature.rsassa = TPMS_SIGNATURE_RSA(hash=TPM2_ALG.SHA384, sig=b"\x05" * 256)
    return sig.marshal()


def ecc_public() -> TPMT_PUBLIC:
    """An ECC P-256 AK public area with a real point."""
    public = ak_template("ecc").publicArea
    public.unique.ecc = TPMS_ECC_POINT(x=EC_X, y=EC_Y)
    return public


def rsa_public() -> TPMT_PUBLIC:
    """An RSA-2048 EK public area with a modulus of the right size."""
    public = ek_template("rsa").publicArea
    public.unique.rsa = b"\xc5" + bytes(range(255))
    return public


def test_quote_attest_decodes_every_field():
    """A quote's TPMS_ATTEST decodes to the values tpm2-pytss marshaled."""
    attest = structures.unmarshal_tpms_attest(quote_attest("sha1:10+sha256:0,10,23"))
    assert attest.type == structures.TPM_ST_ATTEST_QUOTE
    assert attest.qualified_signer == b"\x00\x0b" + bytes(range(32))
    assert attest.extra_data == b"nonce-0123456789"
    assert attest.clock_info == structures.ClockInfo(123456, 3, 7, True)
    assert attest.firmware_version == 0x2019080100000000
    assert attest.attested.pcr_select == (
        structures.PcrSelection("sha1", (10,)),
        structures.PcrSelection("sha256", (0, 10, 23)),
    )
    assert attest.attested.pcr_digest == hashlib.sha256(b"pcrs").digest()


def test_certify_attest_decodes():
    """A certify TPMS_ATTEST decodes the certified name and qualified name."""
    attest = TPMS_ATTEST(
        magic=structures.TPM_GENERATED_VALUE,
        type=TPM2_ST.ATTEST_CERTIFY,
        attested=TPMU_ATTEST(
            certify=TPMS_CERTIFY_INFO(name=b"\x00\x0bname", qualifiedName=b"\x00\x0bq")
        ),
    )
    decoded = structures.unmarshal_tpms_attest(attest.marshal())
    assert decoded.attested == structures.CertifyInfo(b"\x00\x0bname", b"\x00\x0bq")


def test_signatures_decode():
    """ECDSA and RSASSA signatures decode with their hash and values."""
    ecdsa = structures.unmarshal_tpmt_signature(ecdsa_signature())
    assert (ecdsa.sig_alg, ecdsa.hash) == (ALG_ECDSA, "sha256")
    assert (ecdsa.ecc_r, ecdsa.ecc_s) == (b"\x01" * 32, b"\x02" * 32)
    rsassa = structures.unmarshal_tpmt_signature(rsassa_signature())
    assert (rsassa.sig_alg, rsassa.hash, rsassa.rsa) == (
        ALG_RSASSA,
        "sha384",
        b"\x05" * 256,
    )


def test_public_ecc_key_and_name_match_tpm2_pytss():
    """An ECC public area gives the same key and TPM name as tpm2-pytss computes."""
    public = ecc_public()
    decoded = structures.unmarshal_tpmt_public(public.marshal())
    assert decoded.name() == bytes(public.get_name())
    expected = serialization.load_pem_public_key(public.to_pem())
    assert decoded.public_key().public_numbers() == expected.public_numbers()
    assert decoded.scheme == (ALG_ECDSA, "sha256")
    assert decoded.curve == TPM2_ECC.NIST_P256


def test_public_rsa_key_and_name_match_tpm2_pytss():
    """An RSA public area (exponent 0 means 65537) decodes like tpm2-pytss reads it."""
    public = rsa_public()
    decoded = structures.unmarshal_tpm2b_public(
        TPM2B_PUBLIC(publicArea=public).marshal()
    )
    assert decoded.name() == bytes(public.get_name())
    assert decoded.exponent == 65537 and decoded.key_bits == 2048
    expected = serialization.load_pem_public_key(public.to_pem())
    assert decoded.public_key().public_numbers() == expected.public_numbers()
    assert decoded.symmetric == (TPM2_ALG.AES, 128, TPM2_ALG.CFB)


def test_pcr_selection_round_trips():
    """A TPML_PCR_SELECTION we marshal decodes to the same selection in tpm2-pytss."""
    selection = [
        structures.PcrSelection("sha256", (10,)),
        structures.PcrSelection("sha1", (0, 9)),
    ]
    data = structures.marshal_tpml_pcr_selection(selection)
    assert structures.unmarshal_tpml_pcr_selection(data) == tuple(selection)
    theirs, _ = TPML_PCR_SELECTION.unmarshal(data)
    assert theirs.marshal() == data


SAMPLES = {
    "attest": (quote_attest, structures.unmarshal_tpms_attest),
    "ecdsa": (ecdsa_signature, structures.unmarshal_tpmt_signature),
    "rsassa": (rsassa_signature, structures.unmarshal_tpmt_signature),
    "ecc_public": (lambda: ecc_public().marshal(), structures.unmarshal_tpmt_public),
    "rsa_public": (lambda: rsa_public().marshal(), structures.unmarshal_tpmt_public),
    "pcr_selection": (
        lambda: TPML_PCR_SELECTION.parse("sha1:10+sha256:10").marshal(),
        structures.unmarshal_tpml_pcr_selection,
    ),
}


@pytest.mark.parametrize("kind", SAMPLES)
def test_truncation_at_every_byte_is_a_parse_error(kind):
    """Every proper prefix of a structure is rejected: ParseError with an offset."""
    make, parse = SAMPLES[kind]
    data = make()
    parse(data)
    for size in range(len(data)):
        with pytest.raises(ParseError) as info:
            parse(data[:size])
        assert info.value.offset is not None and 0 <= info.value.offset <= size


@pytest.mark.parametrize("kind", SAMPLES)
def test_trailing_bytes_are_a_parse_error(kind):
    """A structure followed by anything is rejected: nothing may be left over."""
    make, parse = SAMPLES[kind]
    with pytest.raises(ParseError, match="left over"):
        parse(make() + b"\x00")


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x00", "magic"),  # magic
        (4, b"\x80\x14", "type"),  # TPM_ST_ATTEST_NV: not supported
        (6, b"\x00\x30", "."),  # qualifiedSigner.size 48 shifts everything
        (6, b"\xff\xff", "exceeds"),  # qualifiedSigner.size beyond a name
        (76, b"\x02", "safe"),  # clockInfo.safe not a TPMI_YES_NO
        (85, b"\x00\x00\x00\x20", "count"),  # pcrSelections.count 32
        (89, b"\x00\x99", "hash"),  # pcrSelections[0].hash not a hash
        (91, b"\x09", "sizeofSelect"),  # sizeofSelect beyond PCR_SELECT_MAX
    ],
)
def test_one_field_corruption_of_an_attest_is_named(offset, value, message):
    """Corrupting one field of a TPMS_ATTEST gives a ParseError saying which."""
    data = bytearray(quote_attest())
    data[offset : offset + len(value)] = value
    with pytest.raises(ParseError, match=message):
        structures.unmarshal_tpms_attest(bytes(data))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x00\x08", "RSA or ECC"),  # type KEYEDHASH
        (2, b"\x00\x07", "nameAlg"),  # nameAlg MGF1 is no hash
        (10, b"\x00\x01", "symmetric"),  # symmetric RSA is no cipher
        (12, b"\x00\x42", "scheme"),  # an unknown scheme
        (16, b"\x00\x09", "curve"),  # an unknown curve
        (20, b"\x00\x10", "coordinates|exceeds"),  # x shorter than the curve
    ],
)
def test_one_field_corruption_of_a_public_area_is_named(offset, value, message):
    """Corrupting one field of a TPMT_PUBLIC gives a ParseError saying which."""
    data = bytearray(ecc_public().marshal())
    data[offset : offset + len(value)] = value
    with pytest.raises(ParseError, match=message):
        structures.unmarshal_tpmt_public(bytes(data))


def test_unsupported_signature_scheme_is_refused():
    """An HMAC signature is refused by name rather than misread."""
    with pytest.raises(ParseError, match="not supported"):
        structures.unmarshal_tpmt_signature(b"\x00\x05\x00\x0b" + b"\x00" * 32)


def test_name_of_a_public_area_without_name_algorithm_is_refused():
    """A public area whose nameAlg is NULL has no TPM name."""
    data = bytearray(ecc_public().marshal())
    data[2:4] = b"\x00\x10"
    with pytest.raises(ParseError, match="nameAlg"):
        structures.tpm2_name(bytes(data))
