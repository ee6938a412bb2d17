"""Event names that are not UTF-8: the kernel keeps their bytes, and so must we."""

from __future__ import annotations

import hashlib
import os

import pytest

from cvtpm.ima import (
    encode_ascii,
    encode_binary,
    format_ascii,
    ima_buf,
    ima_legacy,
    ima_ng,
    ima_sig,
    parse_ascii,
    parse_binary,
    violation,
)

RAW = b"/opt/\xff\xfe/caf\xe9"
NAME = os.fsdecode(RAW)  # what os.readlink gives for such a path


def every_template():
    """One entry per template, each named by RAW."""
    return [
        ima_ng(NAME, hashlib.sha256(b"x").digest()),
        ima_sig(NAME, hashlib.sha256(b"x").digest(), signature=b"\x03\x02sig"),
        ima_buf(NAME, b"buffer"),
        violation(NAME),
        ima_legacy(NAME, hashlib.sha1(b"x").digest()),
    ]


@pytest.mark.parametrize("entry", every_template(), ids=lambda e: e.template_name)
def test_template_data_holds_the_raw_bytes(entry):
    """The hashed template data carries the name's own bytes, not an encoding."""
    assert entry.path_bytes == RAW
    assert RAW in entry.template_data
    assert NAME.encode("utf-8", "replace") not in entry.template_data


@pytest.mark.parametrize("entry", every_template(), ids=lambda e: e.template_name)
def test_binary_round_trip(entry):
    """The binary list stores the raw bytes and reads them back to an equal entry."""
    raw = encode_binary(entry)

    assert RAW in raw
    assert parse_binary(raw) == [entry]
    assert encode_binary(parse_binary(raw)[0]) == raw


@pytest.mark.parametrize("entry", every_template(), ids=lambda e: e.template_name)
def test_ascii_bytes_round_trip(entry):
    """encode_ascii prints the raw bytes, as the kernel's "%s" does, and they parse
    back to an equal entry."""
    line = encode_ascii(entry)

    assert line.rstrip(b"\n").split(b" ")[4] == RAW
    assert line == format_ascii(entry).encode("utf-8", "surrogateescape")
    assert parse_ascii(line) == [entry]


def test_a_kernel_line_with_raw_bytes_parses():
    """A line as the kernel prints it (bytes, not text) gives the name's bytes back."""
    digest = hashlib.sha256(b"x").digest()
    entry = ima_ng(NAME, digest)
    line = (
        b"10 "
        + entry.template_digest.hex().encode()
        + b" ima-ng sha256:"
        + digest.hex().encode()
        + b" "
        + RAW
        + b"\n"
    )

    (parsed,) = parse_ascii(line)

    assert parsed.path_bytes == RAW
    assert parsed.template_digest_matches()
    assert encode_ascii(parsed) == line
