"""Reading a journal file: its valid records, a torn tail, or corruption.

The journal is a kernel binary list (SHA-1 template digests) written one
record at a time, each fsync'ed before it is extended.  A crash can therefore
damage only the end of the file: a record cut short, or a size that grew
before its data reached the disk (zeros).  Such a torn tail is reported, never
removed here; damage with valid records after it, or a whole record that
does not decode, is not a crash and is refused.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cvtpm.errors import ParseError, StateError
from cvtpm.ima.binary import parse_binary
from cvtpm.ima.entry import Entry
from cvtpm.ima.template import TEMPLATES

_U32LE = struct.Struct("<I")
_SHA1_SIZE = 20
# Sanity bounds for a record header; the kernel's names are short and its
# template data holds at most a digest, a path and a signature or buffer.
_MAX_NAME = 255
_MAX_DATA = 1 << 24
_PCR_COUNT = 24  # TCG PC Client Platform TPM Profile: PCRs 0 to 23
_NAMES = tuple(name.encode() for name in TEMPLATES)
_SECTOR = 512  # the smallest unit a disk writes whole


class CorruptJournalError(StateError):
    """Bytes that are no valid record and no crash left: valid records follow
    them, or they are a whole record written as it is."""

    def __init__(self, path: Path, offset: int, index: int, reason: str, followed=True):
        self.path = path
        self.offset = offset
        self.index = index
        after = "and valid entries follow" if followed else "and no valid entry follows"
        super().__init__(
            f"{path}: entry {index}, at byte offset {offset}, is damaged ({reason}) "
            f"{after}; the file is left as it is. Keep a copy, and restore the "
            "list from a backup or move it aside."
        )


@dataclass(frozen=True)
class Scan:
    """A journal's entries, where they end (`size`), and the torn bytes after them."""

    entries: list[Entry]
    size: int
    torn: int = 0


def scan_journal(data: bytes, path: Path) -> Scan:
    """Split journal bytes into entries and a torn tail; raise on corruption.

    Only the tail may be bad.  A bad record followed by anything that parses
    as a valid record is corruption (CorruptJournalError), never dropped.
    """
    entries: list[Entry] = []
    offset = 0
    while offset < len(data):
        end = _record_end(data, offset)
        if end is None:
            entry, reason = None, "its lengths run past the end or out of bounds"
        else:
            entry, reason = _decode(data[offset:end])
        if entry is None:
            whole = end is not None and _written_whole(data[offset:end])
            followed = _valid_record_after(data, offset)
            if whole:
                reason += (
                    "; its template digest is that of its data, so it was "
                    "written so, not torn by a crash"
                )
            never = "" if whole else _never_a_record(data[offset:], offset)
            if never:
                reason = never
            if whole or followed or never:
                raise CorruptJournalError(
                    path, offset, len(entries), reason, followed=followed
                )
            return Scan(entries, offset, len(data) - offset)
        entries.append(entry)
        offset = end
    return Scan(entries, offset)


def _record_end(data: bytes, offset: int) -> int | None:
    # u32 pcr | sha1 template digest | u32 name length | name | body
    pos = offset + 4 + _SHA1_SIZE
    if pos + 4 > len(data):
        return None
    (name_len,) = _U32LE.unpack_from(data, pos)
    if not 0 < name_len <= _MAX_NAME:
        return None
    pos += 4 + name_len
    if pos > len(data):
        return None
    if data[pos - name_len : pos] == b"ima":
        # Legacy template: bare SHA-1 digest, u32 length, name.
        pos += _SHA1_SIZE
    if pos + 4 > len(data):
        return None
    (body_len,) = _U32LE.unpack_from(data, pos)
    if body_len > _MAX_DATA:
        return None
    end = pos + 4 + body_len
    return end if end <= len(data) else None


def _decode(record: bytes) -> tuple[Entry | None, str]:
    """The record's entry, or None and why it is not one."""
    try:
        (entry,) = parse_binary(record)
    except ParseError as exc:
        return None, exc.message  # its offset is within the record, not the file
    except ValueError as exc:
        return None, str(exc)
    # Zeros left by a crash, or a half-written block, fail this check.
    if not entry.template_digest_matches():
        return None, "its template digest does not match its data"
    return entry, ""


def _written_whole(record: bytes) -> bool:
    """True if a record that does not decode has the SHA-1 of its own data.

    A crash leaves a record cut short or blocks of zeros, never bytes whose
    template digest matches: such a record was written as it is. (The legacy
    `ima` template hashes other bytes than it stores; it is left out.)
    """
    (name_len,) = _U32LE.unpack_from(record, 4 + _SHA1_SIZE)
    name_end = 8 + _SHA1_SIZE + name_len
    if record[8 + _SHA1_SIZE : name_end] == b"ima":
        return False
    digest = record[4 : 4 + _SHA1_SIZE]
    return any(digest) and hashlib.sha1(record[name_end + 4 :]).digest() == digest


def _never_a_record(tail: bytes, offset: int) -> str:
    """Why the bytes after the last record, at file `offset`, are not the
    start of a record that a crash cut short, or "" if they may be.

    A crash leaves a record's first bytes, in which blocks that never reached
    the disk read as zeros. A header field that is there (not zeros) with a
    value no record has was never written by an append; nor was a record
    whose every byte its lengths call for is there, not ending in zeros: the
    write reached the disk whole, and what does not decode was damaged after
    (a changed bit), or the file is no list. Such bytes are refused, never
    set aside as a crash's: an entry extended before would be lost.
    """
    pcr = _present(tail, 0, 4)
    if pcr is not None and _U32LE.unpack(pcr)[0] >= _PCR_COUNT:
        return (
            f"it starts with PCR index {_U32LE.unpack(pcr)[0]}, which no TPM has,"
            " so it is no record a crash cut short"
        )
    length = _present(tail, 4 + _SHA1_SIZE, 4)
    if length is None:
        return ""
    (name_len,) = _U32LE.unpack(length)
    name = tail[8 + _SHA1_SIZE : 8 + _SHA1_SIZE + name_len].rstrip(b"\0")
    if name_len > _MAX_NAME or not any(known.startswith(name) for known in _NAMES):
        return (
            f"its template name ({name_len} bytes: {name[:32]!r}) is none a list"
            " holds, so it is no record a crash cut short"
        )
    at = 8 + _SHA1_SIZE + name_len + (_SHA1_SIZE if name == b"ima" else 0)
    body = _present(tail, at, 4)
    if body is not None and _U32LE.unpack(body)[0] > _MAX_DATA:
        return (
            f"its template data is said to be {_U32LE.unpack(body)[0]} bytes long,"
            f" more than any (at most {_MAX_DATA}), so it is no record a crash cut"
            " short"
        )
    end = _record_end(tail, 0)
    if end is not None and not _zeros_from_a_sector(tail[:end], offset):
        return (
            "all its bytes are there, with no sector of zeros at its end, so no"
            " crash cut it short: it was damaged after it was written"
        )
    return ""


def _zeros_from_a_sector(record: bytes, offset: int) -> bool:
    """True if the record, at file `offset`, is zeros from some sector
    boundary of the file to its end: what a write cut short leaves, the
    sectors that never reached the disk reading as zeros."""
    first = -(-offset // _SECTOR) * _SECTOR  # the first boundary at or after it
    return any(
        not any(record[boundary - offset :])
        for boundary in range(first, offset + len(record), _SECTOR)
    )


def _present(data: bytes, start: int, size: int) -> bytes | None:
    """The field at `start` if it was written: all there, and not all zeros."""
    field = data[start : start + size]
    return field if len(field) == size and any(field) else None


def _valid_record_after(data: bytes, offset: int) -> bool:
    """True if a valid record starts anywhere after the bad one at `offset`."""
    for start in range(offset + 1, len(data) - 4 - _SHA1_SIZE):
        end = _record_end(data, start)
        if end is not None and _decode(data[start:end])[0] is not None:
            return True
    return False
