"""The evidence of one container: a quote of PCR 10, list entries since an index, certs.

The agent side (`collect_evidence`) runs next to the vTPM; the verifier only
ever sees an `Evidence`, usually as the JSON of the daemon's evidence endpoint.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cvtpm.attest.quote import pcr_digest
from cvtpm.errors import ParseError, StateError
from cvtpm.ima.entry import BANK_SIZES, PCR_COUNT
from cvtpm.tpm.structures import unmarshal_tpms_attest, unmarshal_tpmt_signature

IMA_PCR = 10  # CONFIG_IMA_MEASURE_PCR_IDX
EVIDENCE_VERSION = 1
NONCE_MIN, NONCE_MAX = 8, 64  # TPM2B_DATA holds at most sizeof(TPMT_HA) bytes
_QUOTE_TRIES = 5


@dataclass
class Evidence:
    """What a verifier needs to judge one container at one moment."""

    container: str
    nonce: bytes
    attest: bytes  # marshaled TPMS_ATTEST, as signed
    signature: bytes  # marshaled TPMT_SIGNATURE
    pcrs: dict[str, dict[int, bytes]]  # bank -> {PCR index -> value}, as quoted
    since: int  # index of the first entry in `entries`
    entries: bytes  # kernel binary list entries from `since` on
    digest_size: int = 20  # template digest size in `entries`
    ak_public: bytes = b""  # marshaled TPMT_PUBLIC of the AK
    ek_cert_pem: str = ""
    ak_cert_pem: str = ""
    ca_chain_pem: str = ""
    banks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; binary fields are base64, PCR values hex."""
        b64 = _b64encode
        return {
            "version": EVIDENCE_VERSION,
            "container": self.container,
            "nonce": self.nonce.hex(),
            "attest": b64(self.attest),
            "signature": b64(self.signature),
            "pcrs": {
                bank: {str(pcr): value.hex() for pcr, value in values.items()}
                for bank, values in self.pcrs.items()
            },
            "since": self.since,
            "entries": b64(self.entries),
            "digest_size": self.digest_size,
            "ak_public": b64(self.ak_public),
            "ek_cert": self.ek_cert_pem,
            "ak_cert": self.ak_cert_pem,
            "ca_chain": self.ca_chain_pem,
            "banks": list(self.banks),
        }

    @classmethod
    def from_json(cls, data: Any) -> Evidence:
        """Parse evidence JSON (a dict or its text); ParseError names the bad field."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ParseError(f"evidence: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ParseError(f"evidence: expected a JSON object, not {_kind(data)}")
        if data.get("version") != EVIDENCE_VERSION:
            raise ParseError(f"evidence: unsupported version {data.get('version')!r}")

        since = _get(data, "since", int)
        if since < 0:
            raise ParseError(
                f"evidence: field 'since' must not be negative, not {since}"
            )
        digest_size = _get(data, "digest_size", int)
        if digest_size not in BANK_SIZES.values():
            raise ParseError(
                f"evidence: field 'digest_size' must be the digest size of a PCR bank"
                f" (20, 32, 48 or 64), not {digest_size}"
            )
        return cls(
            container=_get(data, "container", str),
            nonce=_hex(_get(data, "nonce", str), "nonce"),
            attest=_b64decode(data, "attest"),
            signature=_b64decode(data, "signature"),
            pcrs=_pcrs(_get(data, "pcrs", dict)),
            since=since,
            entries=_b64decode(data, "entries"),
            digest_size=digest_size,
            ak_public=_b64decode(data, "ak_public"),
            ek_cert_pem=_get(data, "ek_cert", str),
            ak_cert_pem=_get(data, "ak_cert", str),
            ca_chain_pem=_get(data, "ca_chain", str),
            banks=_banks(_get(data, "banks", list)),
        )


# JSON's names for the Python types json.loads gives, for messages.
_JSON_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _get(data: dict[str, Any], key: str, kind: type) -> Any:
    """data[key], checked to be of `kind`; the ParseError names field and type."""
    if key not in data:
        raise ParseError(f"evidence: field {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParseError(
            f"evidence: field {key!r} must be {_JSON_KINDS[kind]}, not {_kind(value)}"
        )
    return value


def _hex(text: str, where: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ParseError(f"evidence: field {where!r} is not hex") from None


def _pcrs(raw: dict[str, Any]) -> dict[str, dict[int, bytes]]:
    """{"sha256": {"10": "<hex>"}} as {"sha256": {10: bytes}}, every part checked."""
    pcrs: dict[str, dict[int, bytes]] = {}
    for bank, values in raw.items():
        where = f"pcrs.{bank}"
        if not isinstance(values, dict):
            raise ParseError(
                f"evidence: field {where!r} must be an object, not {_kind(values)}"
            )
        pcrs[bank] = {}
        for pcr, value in values.items():
            if not (pcr.isascii() and pcr.isdigit() and int(pcr) < PCR_COUNT):
                raise ParseError(
                    f"evidence: field {where!r} has {pcr!r}, not a PCR index"
                    f" from 0 to {PCR_COUNT - 1}"
                )
            if not isinstance(value, str):
                raise ParseError(
                    f"evidence: field '{where}.{pcr}' must be a string, not"
                    f" {_kind(value)}"
                )
            pcrs[bank][int(pcr)] = _hex(value, f"{where}.{pcr}")
    return pcrs


def _banks(raw: list[Any]) -> list[str]:
    # An empty list would leave PCR 10 of no bank to check the list against.
    if not raw:
        raise ParseError("evidence: field 'banks' is empty; a vTPM has a PCR bank")
    for bank in raw:
        if bank not in BANK_SIZES:
            known = ", ".join(BANK_SIZES)
            raise ParseError(
                f"evidence: field 'banks' has {bank!r}, not a PCR bank ({known})"
            )
    return list(raw)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(data: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(_get(data, key, str), validate=True)
    except ValueError as exc:
        if isinstance(exc, ParseError):
            raise
        raise ParseError(f"evidence: field {key!r} is not base64") from None


class QuotingTpm(Protocol):
    """The part of cvtpm.tpm.client.TpmClient evidence collection uses."""

    def pcr_read(
        self, pcr: int, banks: list[str] | None = None
    ) -> dict[str, bytes]: ...

    def quote(
        self, ak_handle: int, nonce: bytes, selection: dict[str, list[int]]
    ) -> tuple[bytes, bytes]: ...

    def read_public(self, handle: int) -> Any: ...


def check_nonce(nonce: bytes) -> bytes:
    """The nonce if its length suits TPM2_Quote's qualifyingData, else ParseError."""
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ParseError(
            f"nonce must be {NONCE_MIN} to {NONCE_MAX} bytes, not {len(nonce)}"
        )
    return nonce


def collect_evidence(
    client: QuotingTpm, info: Any, nonce: bytes, list_path: str | Path, since: int = 0
) -> Evidence:
    """Quote PCR 10 in every bank of the vTPM `info`, then read the list from `since`.

    The list is read after the quote, so it holds at least the entries the
    quoted PCR covers; entries appended in between are the verifier's to leave
    pending. `info` is a cvtpm.vtpm VtpmInfo (name, ak_handle, banks, certs).
    """
    check_nonce(nonce)
    if since < 0:
        raise ParseError(f"since must not be negative, not {since}")
    banks = list(info.banks)
    selection = {bank: [IMA_PCR] for bank in banks}

    # The PCRs are read before quoting; if an extend lands in between, the
    # quoted digest will not match the values read, so read and quote again.
    for _ in range(_QUOTE_TRIES):
        values = client.pcr_read(IMA_PCR, banks)
        attest, signature = client.quote(info.ak_handle, nonce, selection)
        quoted = unmarshal_tpms_attest(attest).attested
        hash_name = unmarshal_tpmt_signature(signature).hash
        pcrs = {bank: {IMA_PCR: values[bank]} for bank in banks}
        if pcr_digest(quoted.pcr_select, pcrs, hash_name) == quoted.pcr_digest:
            break
    else:
        raise StateError(f"PCR {IMA_PCR} kept changing while quoting; try again")

    # A list shorter than `since` is reported as such: the evidence then starts
    # where the list ends, and the verifier names the truncation.
    since, entries = list_slice(Path(list_path), since)
    return Evidence(
        container=info.name,
        nonce=nonce,
        attest=attest,
        signature=signature,
        pcrs=pcrs,
        since=since,
        entries=entries,
        ak_public=_tpmt_public(client.read_public(info.ak_handle)),
        ek_cert_pem=info.ek_cert_pem,
        ak_cert_pem=info.ak_cert_pem or "",
        ca_chain_pem=info.ca_chain_pem or "",
        banks=banks,
    )


def _tpmt_public(read: Any) -> bytes:
    """Marshaled TPMT_PUBLIC from what TpmClient.read_public returns."""
    if isinstance(read, tuple):  # (TPM2B_PUBLIC, name)
        read = read[0]
    if isinstance(read, bytes | bytearray):
        return bytes(read)
    return read.publicArea.marshal()


def read_entries(list_path: Path, since: int, digest_size: int = 20) -> bytes:
    """The complete entries of a binary measurement list from entry `since` on."""
    return list_slice(list_path, since, digest_size)[1]


def list_slice(list_path: Path, since: int, digest_size: int = 20) -> tuple[int, bytes]:
    """The index of the first complete entry from `since` on, and the entries' bytes.

    A list of fewer than `since` complete entries gives its own length and no
    bytes (a missing list has none), so a reader asking past the end learns
    where the list really ends.
    """
    if not list_path.exists():
        return 0, b""
    data = list_path.read_bytes()
    start, first = _walk(data, since, digest_size)
    end, _ = _walk(data, None, digest_size, start)
    if end != len(data) and digest_size == 20:
        # Bytes that are no complete entry: a record being appended (or torn
        # by a crash) is left for later, but damage with entries after it is
        # an error that names the entry, not a shorter list.
        from cvtpm.measure._scan import scan_journal

        scan_journal(data, list_path)
    return first, data[start:end]


def entry_offset(
    data: bytes, index: int | None, digest_size: int = 20, start: int = 0
) -> int:
    """Byte offset `index` entries after `start` in a binary list (None: all of them).

    Only the length fields are read (ima_fs.c ima_measurements_show): PCR,
    template digest, name length and name, then the template data length except
    for template "ima", whose data is a 20-byte digest and a length-prefixed name.
    A list shorter than asked for, or ending in a partial entry being appended,
    gives the end of its last complete entry.
    """
    return _walk(data, index, digest_size, start)[0]


def _walk(
    data: bytes, index: int | None, digest_size: int, start: int = 0
) -> tuple[int, int]:
    """entry_offset, and how many complete entries were stepped over."""
    offset = start
    count = 0
    while index is None or count < index:
        header = offset + 4 + digest_size
        if header + 4 > len(data):
            break
        name_len = int.from_bytes(data[header : header + 4], "little")
        name_end = header + 4 + name_len
        if data[header + 4 : name_end] == b"ima":
            name_end += 20
        if name_end + 4 > len(data):
            break
        body = int.from_bytes(data[name_end : name_end + 4], "little")
        if name_end + 4 + body > len(data):
            break
        offset = name_end + 4 + body
        count += 1
    return offset, count
