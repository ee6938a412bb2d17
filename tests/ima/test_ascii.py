"""Ascii lists: the kernel's exact printing, and clear errors for bad lines."""

from __future__ import annotations

import hashlib

import pytest

from cvtpm.errors import ParseError
from cvtpm.ima import (
    boot_aggregate,
    dump_ascii,
    format_ascii,
    ima_buf,
    ima_legacy,
    ima_ng,
    ima_sig,
    parse_ascii,
    violation,
)

LINE = (
    "10 1ef92e931f4833199716476d629006120581329d ima-ng "
    "sha256:ad6e0c05f6389ba6cb9900ac59948a53cf696a449b5d57f8d337accae2d0bb4e "
    "/usr/lib/systemd/systemd\n"
)


def test_one_digit_pcr_is_padded():
    """ "%2d " prints PCR 9 as " 9 ", and that parses back."""
    entry = ima_ng("/bin/sh", bytes(32), pcr=9)

    line = format_ascii(entry)

    assert line.startswith(" 9 ")
    assert parse_ascii(line) == [entry]


def test_fields_printed_like_the_kernel():
    """d-ng as alg:hex, names as text, sig/buf as hex, an empty sig as nothing."""
    digest = hashlib.sha256(b"x").digest()

    assert format_ascii(ima_sig("/x", digest)).endswith(f"sha256:{digest.hex()} /x \n")
    assert format_ascii(ima_sig("/x", digest, signature=b"\x03\x02")).endswith(
        " /x 0302\n"
    )
    assert format_ascii(ima_buf("kv", b"6.1")).endswith(" kv 362e31\n")
    legacy = ima_legacy("/x", hashlib.sha1(b"x").digest())
    assert format_ascii(legacy).endswith(f" ima {hashlib.sha1(b'x').hexdigest()} /x\n")


def test_violation_line():
    """A violation prints zero template and file digests."""
    line = format_ascii(violation("/etc/passwd"))

    assert line == f"10 {'0' * 40} ima-ng sha256:{'0' * 64} /etc/passwd\n"


def test_spaces_in_names_become_underscores():
    """The kernel stores names with '_' for ' ', so the ascii columns stay intact."""
    entry = ima_ng("/opt/my app/run", bytes(32))

    assert entry.path == "/opt/my_app/run"
    assert parse_ascii(format_ascii(entry)) == [entry]


def test_non_utf8_names_round_trip():
    """File names that are not UTF-8 survive parse and format byte for byte."""
    raw = LINE.replace("systemd\n", "").encode() + b"caf\xe9\n"

    entries = parse_ascii(raw)

    assert dump_ascii(entries).encode("utf-8", "surrogateescape") == raw


def test_round_trip_every_template():
    """Format then parse gives equal entries for every template."""
    entries = [
        boot_aggregate(None, "ima-sig"),
        ima_ng("/a", bytes(32)),
        ima_sig("/b", bytes(48), "sha384", signature=b"\x03\x02\x04"),
        ima_buf(".ima", b"k"),
        violation("/c"),
        ima_legacy("/d", bytes(20)),
    ]

    assert parse_ascii(dump_ascii(entries)) == entries


def test_last_line_without_newline():
    """A final line without its newline is still read."""
    assert len(parse_ascii(LINE + LINE.rstrip("\n"))) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("10 abc", "expected 'PCR"),
        (LINE.replace("10 ", "x0 ", 1), "bad PCR"),
        (LINE.replace("10 ", "24 ", 1), "bad PCR"),
        (LINE.replace("1ef9", "zzf9"), "template hash is not hex"),
        (LINE.replace("1ef9", "1ef", 1), "not hex"),
        (LINE.replace("1ef92e93", "", 1), "template hash of 16 bytes"),
        (LINE.replace("ima-ng", "ima-xx"), "unsupported template"),
        (LINE.replace("ima-ng", "ima-sig"), "ima-sig has 3 fields, found 2"),
        (LINE.replace("sha256:", "sha257:"), "not '<alg>:<hex>'"),
        (LINE.replace("sha256:", ""), "not '<alg>:<hex>'"),
        (LINE.replace("sha256:", "sha1:"), "sha1 file digest of 32 bytes"),
        (LINE.replace(" /usr", " /u sr"), "has 2 fields, found 3"),
    ],
)
def test_bad_lines(line, message):
    """Each defect is a ParseError naming the line, with entry index and offset."""
    text = LINE + line.rstrip("\n") + "\n"

    with pytest.raises(ParseError, match=message) as info:
        parse_ascii(text)

    assert info.value.entry == 1
    assert info.value.offset == len(LINE)
    assert "line 2" in str(info.value)


def test_truncation_never_crashes(signed_bytes):
    """Cutting a real list anywhere gives entries or a ParseError, nothing else."""
    for cut in range(len(signed_bytes)):
        try:
            parse_ascii(signed_bytes[:cut])
        except ParseError as exc:
            assert exc.entry is not None and exc.offset is not None
