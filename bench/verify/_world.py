"""A software stand-in for a vTPM: CA, EK/AK certificates and signed quotes.

The benchmark measures the verifier, not a TPM, so quotes are signed here with
an ECDSA P-256 key whose TPMT_PUBLIC is the AK's; everything the verifier
checks (chain, signature, nonce, digest, replay, policy) runs as in production.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tpm2_pytss.types import TPMS_ECC_POINT

from cvtpm.attest.evidence import Evidence
from cvtpm.attest.trust import TrustStore
from cvtpm.attest.verifier import Registration
from cvtpm.ca.authority import LocalCa, TpmIdentity
from cvtpm.ima.entry import Entry, boot_aggregate, ima_ng
from cvtpm.tpm._cursor import marshal_tpm2b, marshal_u16, marshal_u32
from cvtpm.tpm.structures import (
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    PcrSelection,
    marshal_tpml_pcr_selection,
)
from cvtpm.tpm.templates import ak_template


def make_entries(count: int, start: int = 0) -> list[Entry]:
    """`count` ima-ng entries with library-like paths and sha256 file digests."""
    return [
        ima_ng(
            f"/usr/lib/x86_64-linux-gnu/libbench{i}.so.{i % 7}",
            hashlib.sha256(b"file %d" % i).digest(),
        )
        for i in range(start, start + count)
    ]


def make_list(count: int) -> list[Entry]:
    """A list as a container's starts: boot_aggregate, then `count - 1` files."""
    return [boot_aggregate(None)] + make_entries(count - 1)


def keylime_policy(entries: list[Entry]) -> dict:
    """A Keylime runtime policy (meta.version 1) allowing exactly these entries."""
    digests: dict[str, list[str]] = {}
    for entry in entries:
        digests.setdefault(entry.path, []).append(entry.file_digest.hex())
    return {
        "meta": {"version": 1, "generator": 0},
        "release": 0,
        "digests": digests,
        "excludes": [],
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
        "ima-buf": {},
        "verification-keys": "",
    }


class World:
    """One container's vTPM as the verifier sees it, with a software AK."""

    def __init__(self, directory: Path, name: str = "bench"):
        ca = LocalCa(directory / "ca")
        self._ak_key = ec.generate_private_key(ec.SECP256R1())
        ek_key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._ak_key.public_key().public_numbers()
        public = ak_template("ecc").publicArea
        public.unique.ecc = TPMS_ECC_POINT(
            x=numbers.x.to_bytes(32, "big"), y=numbers.y.to_bytes(32, "big")
        )
        pem = serialization.Encoding.PEM
        ek_cert = ca.issue_ek_certificate(ek_key.public_key(), TpmIdentity(1, "B", 1))
        ak_cert = ca.issue_ak_certificate(self._ak_key.public_key(), name)
        self.trust = TrustStore()
        self.trust.add_pem(ca.root_pem)
        self.name = name
        self.registration = Registration(
            name,
            ek_cert.public_bytes(pem).decode(),
            public.marshal(),
            ak_cert.public_bytes(pem).decode(),
            ca.chain_pem.decode(),
            ["sha1"],
        )

    def evidence(
        self, nonce: bytes, pcrs: dict[str, bytes], entries: bytes, since: int
    ) -> Evidence:
        """Evidence with a quote of PCR 10 in the given banks, signed by the AK."""
        selection = [PcrSelection(bank, (10,)) for bank in pcrs]
        digest = hashlib.sha256(b"".join(pcrs.values())).digest()
        attest = (
            marshal_u32(TPM_GENERATED_VALUE)
            + marshal_u16(TPM_ST_ATTEST_QUOTE)
            + marshal_tpm2b(b"\x00\x0b" + bytes(32))
            + marshal_tpm2b(nonce)
            + (1000).to_bytes(8, "big")
            + marshal_u32(1)
            + marshal_u32(0)
            + b"\x01"
            + bytes(8)
            + marshal_tpml_pcr_selection(selection)
            + marshal_tpm2b(digest)
        )
        der = self._ak_key.sign(attest, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = (
            marshal_u16(0x0018)
            + marshal_u16(0x000B)
            + marshal_tpm2b(r.to_bytes(32, "big"))
            + marshal_tpm2b(s.to_bytes(32, "big"))
        )
        return Evidence(
            container=self.name,
            nonce=nonce,
            attest=attest,
            signature=signature,
            pcrs={bank: {10: value} for bank, value in pcrs.items()},
            since=since,
            entries=entries,
            banks=list(pcrs),
        )


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
