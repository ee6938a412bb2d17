"""Binary lists: layout, per-bank digests, truncation and one-field corruption."""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct

import pytest

from cvtpm.errors import ParseError
from cvtpm.ima import (
    boot_aggregate,
    dump_binary,
    encode_binary,
    ima_buf,
    ima_legacy,
    ima_ng,
    ima_sig,
    iter_binary,
    parse_binary,
    violation,
)


def small_list():
    """One entry of every template, a signature and a violation."""
    return [
        boot_aggregate(None),
        ima_ng("/bin/sh", hashlib.sha256(b"sh").digest()),
        ima_sig("/bin/ls", hashlib.sha256(b"ls").digest(), signature=b"\x03\x02sig"),
        ima_buf(".ima", b"key"),
        violation("/etc/passwd"),
        ima_legacy("/bin/old", hashlib.sha1(b"old").digest()),
    ]


def entry_offsets(entries) -> list[int]:
    """The byte offset at which each entry starts in dump_binary(entries)."""
    offsets, position = [], 0
    for entry in entries:
        offsets.append(position)
        position += len(encode_binary(entry))
    return offsets


def test_ima_ng_layout():
    """u32le pcr | digest | u32le name len | name | u32le data len | data."""
    entry = ima_ng("/bin/sh", bytes(range(32)))

    raw = encode_binary(entry)

    d_ng = b"sha256:\x00" + bytes(range(32))
    n_ng = b"/bin/sh\x00"
    data = struct.pack("<I", len(d_ng)) + d_ng + struct.pack("<I", len(n_ng)) + n_ng
    assert raw == (
        struct.pack("<I", 10)
        + hashlib.sha1(data).digest()
        + struct.pack("<I", 6)
        + b"ima-ng"
        + struct.pack("<I", len(data))
        + data
    )


def test_legacy_ima_layout():
    """Legacy `ima`: no data length, bare sha1 digest, u32 strlen + name without NUL;
    its template digest covers the name zero-padded to 256 bytes."""
    file_digest = hashlib.sha1(b"x").digest()

    entry = ima_legacy("/bin/x", file_digest)

    padded = file_digest + b"/bin/x".ljust(256, b"\x00")
    assert entry.template_data == padded
    assert entry.template_digest == hashlib.sha1(padded).digest()
    assert encode_binary(entry) == (
        struct.pack("<I", 10)
        + entry.template_digest
        + struct.pack("<I", 3)
        + b"ima"
        + file_digest
        + struct.pack("<I", 6)
        + b"/bin/x"
    )
    assert parse_binary(encode_binary(entry)) == [entry]


def test_round_trip_every_template():
    """Encode then parse gives equal entries, and encoding again the same bytes."""
    entries = small_list()
    raw = dump_binary(entries)

    assert parse_binary(raw) == entries
    assert dump_binary(parse_binary(raw)) == raw


@pytest.mark.parametrize("bank", ["sha256", "sha384", "sha512"])
def test_per_bank_lists(bank):
    """A per-bank list carries the bank's template digests; digest_size= reads it."""
    entries = [entry.for_bank(bank) for entry in small_list()]
    size = len(hashlib.new(bank).digest())

    parsed = parse_binary(dump_binary(entries), digest_size=size)

    assert parsed == entries
    assert all(len(e.template_digest) == size for e in parsed)
    assert parsed[4].is_violation
    assert all(e.template_digest_matches() for e in parsed)


def test_unknown_digest_size_is_misuse():
    """A digest size no bank has is a programming error (ValueError)."""
    with pytest.raises(ValueError):
        parse_binary(b"", digest_size=21)


def test_empty_list():
    """An empty file is an empty list."""
    assert parse_binary(b"") == []


def test_truncation_at_every_byte():
    """Cutting the list anywhere gives a ParseError at or before the cut, or (at an
    entry boundary) exactly the entries before it; never another exception."""
    entries = small_list()
    raw = dump_binary(entries)
    boundaries = dict(zip(entry_offsets(entries), range(len(entries)), strict=True))

    for cut in range(1, len(raw)):
        if cut in boundaries:
            assert parse_binary(raw[:cut]) == entries[: boundaries[cut]]
            continue
        with pytest.raises(ParseError) as info:
            parse_binary(raw[:cut])
        assert info.value.offset is not None and info.value.offset <= cut
        assert info.value.entry is not None


def corrupt_u32(raw: bytes, at: int, value: int) -> bytes:
    """raw with the u32le at `at` replaced."""
    return raw[:at] + struct.pack("<I", value) + raw[at + 4 :]


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("pcr", [24, 0xFFFFFFFF]),
        ("name_len", [0, 2, 0xFFFF, 0xFFFFFFFF]),
        ("name", []),
        ("data_len", [-1, 1, 0xFFFFFFFF]),
        ("first_field_len", [-1, 1, 0xFFFFFFFF]),
    ],
)
def test_one_corrupted_field(index, field, values):
    """Corrupting one length, the PCR or the template name of one entry gives a
    ParseError that names that entry and an offset inside it."""
    entries = small_list()
    raw = dump_binary(entries)
    start = entry_offsets(entries)[index]
    end = start + len(encode_binary(entries[index]))
    name_len_at = start + 4 + 20
    name_len = len(entries[index].template_name)
    after_name = name_len_at + 4 + name_len
    legacy = entries[index].template_name == "ima"

    variants = []
    if field == "pcr":
        variants = [corrupt_u32(raw, start, v) for v in values]
    elif field == "name_len":
        variants = [corrupt_u32(raw, name_len_at, v) for v in values]
    elif field == "name":
        bad = raw[: name_len_at + 4] + b"X" + raw[name_len_at + 5 :]
        variants = [bad]
    elif field == "data_len" and not legacy:
        real = len(entries[index].template_data)
        variants = [corrupt_u32(raw, after_name, real + d) for d in values[:2]]
        variants.append(corrupt_u32(raw, after_name, values[2]))
    elif field == "first_field_len":
        # The d-ng field length (or, for `ima`, the name length after 20 bytes).
        at = after_name + 20 if legacy else after_name + 4
        real = struct.unpack_from("<I", raw, at)[0]
        variants = [corrupt_u32(raw, at, real + d) for d in values[:2]]
        variants.append(corrupt_u32(raw, at, values[2]))

    # A legacy name made one byte shorter is still a valid name (the template
    # has no data length to check it against): the next read then fails.
    entries_hit = (
        {index, index + 1} if legacy and field == "first_field_len" else {index}
    )
    for variant in variants:
        with pytest.raises(ParseError) as info:
            parse_binary(variant)
        assert info.value.entry in entries_hit, str(info.value)
        assert start <= info.value.offset <= max(end, len(variant)), str(info.value)


def test_random_byte_flips_never_crash():
    """Flipping random bytes yields entries or a ParseError, never another error."""
    raw = dump_binary(small_list())
    rng = random.Random(20240601)

    for _ in range(3000):
        mutated = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        with contextlib.suppress(ParseError):
            list(iter_binary(bytes(mutated)))


def test_error_messages_name_entry_and_offset():
    """The message says which entry and which byte, e.g. for a bad PCR."""
    raw = dump_binary(small_list())
    second = entry_offsets(small_list())[1]

    with pytest.raises(ParseError, match=rf"entry 1, offset {second}: PCR index 99"):
        parse_binary(corrupt_u32(raw, second, 99))
