"""Evidence JSON round-trips, refuses malformed input, and lists are sliced right."""

from __future__ import annotations

import pytest

from cvtpm.attest.endpoint import parse_request
from cvtpm.attest.evidence import Evidence, entry_offset, read_entries
from cvtpm.errors import ParseError
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import ima_legacy, ima_ng


def sample() -> Evidence:
    return Evidence(
        container="web",
        nonce=b"n" * 20,
        attest=b"\xff\x54attest",
        signature=b"sig",
        pcrs={"sha256": {10: b"\1" * 32}},
        since=3,
        entries=b"entries",
        ak_public=b"ak",
        ek_cert_pem="EK",
        banks=["sha256"],
    )


def test_json_round_trip():
    """to_json then from_json gives the same evidence."""
    assert Evidence.from_json(sample().to_json()) == sample()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 2),
        ("nonce", "zz"),
        ("attest", "not base64!"),
        ("since", "3"),
        ("pcrs", {"sha256": {"ten": "00"}}),
        ("banks", "sha256"),
    ],
)
def test_malformed_fields_are_parse_errors(field, value):
    """Each malformed field is refused with a ParseError."""
    data = sample().to_json()
    data[field] = value
    with pytest.raises(ParseError):
        Evidence.from_json(data)


def test_list_slices_skip_whole_entries_and_partial_tails(tmp_path):
    """Entries from an index on, including legacy ones; a half-written tail is left."""
    entries = [ima_ng(f"/f{i}", bytes(32)) for i in range(3)]
    entries.insert(1, ima_legacy("/old", bytes(20)))
    blobs = [encode_binary(e) for e in entries]
    path = tmp_path / "list"
    path.write_bytes(b"".join(blobs) + blobs[0][:10])
    assert read_entries(path, 0) == b"".join(blobs)
    assert read_entries(path, 2) == b"".join(blobs[2:])
    assert read_entries(path, 9) == b""
    assert entry_offset(b"".join(blobs), 2) == len(blobs[0]) + len(blobs[1])
    assert read_entries(tmp_path / "missing", 0) == b""


@pytest.mark.parametrize(
    ("nonce", "since"), [("zz", 0), ("00" * 4, 0), ("00" * 65, 0), ("00" * 20, -1)]
)
def test_bad_evidence_requests_are_refused(nonce, since):
    """A non-hex, too short or too long nonce, or a negative index, is refused."""
    with pytest.raises(ParseError):
        parse_request(nonce, since)
