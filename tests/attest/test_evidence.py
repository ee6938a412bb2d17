"""Evidence JSON round-trips, refuses malformed input, and lists are sliced right."""

from __future__ import annotations

import pytest

from cvtpm.attest.endpoint import parse_request
from cvtpm.attest.evidence import Evidence, entry_offset, list_slice, read_entries
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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nonce": None}, "field 'nonce' is missing"),
        ({"nonce": 7}, "field 'nonce' must be a string, not an integer"),
        ({"since": True}, "field 'since' must be an integer, not a boolean"),
        ({"since": -2}, "field 'since' must not be negative, not -2"),
        ({"digest_size": 21}, "must be the digest size of a PCR bank"),
        ({"pcrs": {"sha256": []}}, "field 'pcrs.sha256' must be an object"),
        ({"pcrs": {"sha256": {"24": "00"}}}, "'24', not a PCR index from 0 to 23"),
        ({"pcrs": {"sha256": {"10": 1}}}, "'pcrs.sha256.10' must be a string"),
        ({"pcrs": {"sha256": {"10": "x"}}}, "field 'pcrs.sha256.10' is not hex"),
        ({"banks": ["md5"]}, "field 'banks' has 'md5', not a PCR bank"),
        ({"banks": []}, "field 'banks' is empty; a vTPM has a PCR bank"),
        ({"entries": None}, "field 'entries' is missing"),
    ],
)
def test_each_bad_field_is_named(change, message):
    """The ParseError names the field and what is wrong with it."""
    data = sample().to_json()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(ParseError, match=message):
        Evidence.from_json(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[1]", "not an array"), ("nul", "not JSON"), (b"\xff", "not JSON")],
)
def test_evidence_that_is_not_an_object(text, message):
    """Text that is not JSON, or JSON that is not an object, is refused."""
    with pytest.raises(ParseError, match=message):
        Evidence.from_json(text)


def test_a_slice_past_the_end_says_where_the_list_ends(tmp_path):
    """Asking from beyond the last entry gives the list's length and no bytes."""
    blobs = [encode_binary(ima_ng(f"/f{i}", bytes(32))) for i in range(3)]
    path = tmp_path / "list"
    path.write_bytes(b"".join(blobs) + blobs[0][:7])
    assert list_slice(path, 1) == (1, b"".join(blobs[1:]))
    assert list_slice(path, 9) == (3, b"")
    assert list_slice(tmp_path / "missing", 4) == (0, b"")


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


def test_damage_before_the_tail_is_an_error_not_a_shorter_list(tmp_path):
    """A broken length with entries after it names the entry; a torn tail does not."""
    from cvtpm.errors import StateError

    blobs = [encode_binary(ima_ng(f"/f{i}", bytes(32))) for i in range(4)]
    path = tmp_path / "list"
    path.write_bytes(b"".join(blobs) + blobs[0][:9])  # torn: left for later
    assert list_slice(path, 0) == (0, b"".join(blobs))

    damaged = bytearray(b"".join(blobs))
    name_len = sum(map(len, blobs[:2])) + 4 + 20  # entry 2's template name length
    damaged[name_len : name_len + 4] = (10**6).to_bytes(4, "little")
    path.write_bytes(bytes(damaged))
    with pytest.raises(StateError, match="entry 2, at byte offset"):
        list_slice(path, 0)
