"""A container's measurement list on disk, written ahead of its vTPM's PCR 10.

Each list lives in its own directory (`Paths.lists / NAME`):

- `binary_runtime_measurements`: the kernel's binary format (SHA-1 template
  digests, little-endian), and at the same time the journal: an entry is
  appended and fsync'ed before it is extended, so the file is never behind
  the PCR.  It is the only authority; everything else derives from it.
- `ascii_runtime_measurements`: the kernel's ascii format, rewritten from the
  binary file when the list is opened and appended to after each entry.

After a crash the PCR can only be behind the file, never ahead: `reconcile`
extends what is missing, replays everything into a reset TPM, and refuses
anything else.  A record cut short by a crash mid-write (only the last can
be, since entries are appended one at a time and the extend waits for fsync)
is cut off, never read as an entry: it was never extended.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cvtpm.errors import ParseError, StateError
from cvtpm.ima.ascii import dump_ascii, format_ascii
from cvtpm.ima.binary import encode_binary, parse_binary
from cvtpm.ima.entry import DEFAULT_PCR, Entry
from cvtpm.ima.replay import Replayer

log = logging.getLogger(__name__)

BINARY_NAME = "binary_runtime_measurements"
ASCII_NAME = "ascii_runtime_measurements"

_U32LE = struct.Struct("<I")
_SHA1_SIZE = 20
# Sanity bounds for a record header; the kernel's names are short and its
# template data holds at most a digest, a path and a signature or buffer.
_MAX_NAME = 255
_MAX_DATA = 1 << 24


class Extender(Protocol):
    """The part of a TPM client the agent needs (cvtpm.tpm.client.TpmClient fits)."""

    def active_banks(self) -> list[str]: ...

    def pcr_read(self, pcr: int, banks: Iterable[str] | None = None) -> dict: ...

    def pcr_extend(self, pcr: int, digests: dict[str, bytes]) -> None: ...


class MeasurementList:
    """One container's list: entries in memory, the binary journal on disk."""

    def __init__(self, directory: Path, pcr: int = DEFAULT_PCR):
        self.directory = Path(directory)
        self.pcr = pcr
        self.entries: list[Entry] = []
        self.lock = threading.RLock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._binary_path = self.directory / BINARY_NAME
        self._load()
        self._binary = open(self._binary_path, "ab", buffering=0)  # noqa: SIM115
        self._ascii = open(self.directory / ASCII_NAME, "a")  # noqa: SIM115

    def close(self) -> None:
        """Close the files; the list stays on disk."""
        self._binary.close()
        self._ascii.close()

    def append(self, entry: Entry) -> None:
        """Write the entry to the journal and make it durable (write + fsync)."""
        record = encode_binary(entry)
        fd = self._binary.fileno()
        try:
            written = os.write(fd, record)
            if written != len(record):
                raise OSError(f"short write to {self._binary_path} (disk full?)")
            os.fsync(fd)
        except OSError:
            # Leave the journal as it was: no partial or undurable record stays
            # behind to be mistaken for a measurement that was extended.
            os.ftruncate(fd, self._size)
            raise
        self._size += len(record)
        self.entries.append(entry)

        # The ascii copy is derived data: rebuilt from the binary file on open.
        self._ascii.write(format_ascii(entry))
        self._ascii.flush()

    def reconcile(self, tpm: Extender) -> int:
        """Bring the TPM's PCR up to the list; returns how many entries were extended.

        The PCR must equal the replay of the first n entries for some n (n = 0
        is a reset TPM); entries n.. are then extended.  Any other value means
        the list and the TPM disagree about history, and nothing is touched.
        """
        banks = list(tpm.active_banks())
        current = tpm.pcr_read(self.pcr, banks)

        # 1. Find the longest prefix of the list whose replay is the PCR.
        replayer = Replayer(banks, pcr=self.pcr)
        matched = 0 if replayer.values == current else None
        for n, entry in enumerate(self.entries, start=1):
            replayer.extend(entry)
            if replayer.values == current:
                matched = n
        if matched is None:
            raise StateError(
                f"PCR {self.pcr} of the vTPM for {self.directory} matches no prefix "
                f"of its {len(self.entries)}-entry list; refusing to touch either "
                "(was the vTPM shared, or the list edited?)"
            )

        # 2. Extend what the TPM missed, in order.
        missing = self.entries[matched:]
        for entry in missing:
            extend(tpm, entry, banks, self.pcr)
        if missing:
            log.info(
                "%s: extended %d journaled entries the vTPM had not seen",
                self.directory,
                len(missing),
            )
        return len(missing)

    def _load(self) -> None:
        data = self._binary_path.read_bytes() if self._binary_path.exists() else b""
        good, entries = _read_records(data, self._binary_path)
        if good < len(data):
            log.warning(
                "%s: cut a torn last record (%d bytes at offset %d, never extended)",
                self._binary_path,
                len(data) - good,
                good,
            )
            with open(self._binary_path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        self.entries = entries
        self._size = good

        tmp = self.directory / (ASCII_NAME + ".tmp")
        tmp.write_text(dump_ascii(entries))
        os.replace(tmp, self.directory / ASCII_NAME)


def extend(tpm: Extender, entry: Entry, banks: Iterable[str], pcr: int) -> None:
    """One TPM2_PCR_Extend of `entry` into every bank, as ima_pcr_extend() does."""
    if entry.pcr != pcr:
        return
    tpm.pcr_extend(pcr, {bank: entry.pcr_extend_digest(bank) for bank in banks})


def read_list(directory: Path) -> list[Entry]:
    """The entries of a list on disk, without touching it (a torn tail is ignored).

    A list whose file is not written yet has no entries.
    """
    path = Path(directory) / BINARY_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    _, entries = _read_records(data, path)
    return entries


def _read_records(data: bytes, path: Path) -> tuple[int, list[Entry]]:
    """Split the journal into valid records; returns (good length, entries).

    Only the last record may be bad (torn).  A bad record followed by more
    data that parses is corruption, not a crash, and is refused.
    """
    entries: list[Entry] = []
    offset = 0
    while offset < len(data):
        end = _record_end(data, offset)
        entry = _decode(data[offset:end]) if end is not None else None
        if entry is None:
            if _more_records_follow(data, offset):
                raise StateError(
                    f"{path}: entry {len(entries)} at offset {offset} is corrupt and "
                    "more entries follow; refusing to drop recorded measurements"
                )
            return offset, entries
        entries.append(entry)
        offset = end
    return offset, entries


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


def _decode(record: bytes) -> Entry | None:
    try:
        (entry,) = parse_binary(record)
    except (ParseError, ValueError):
        return None
    # Zeros left by a crash, or a half-written block, fail this check.
    return entry if entry.template_digest_matches() else None


def _more_records_follow(data: bytes, offset: int) -> bool:
    """True if a valid record starts anywhere after the bad one at `offset`."""
    for start in range(offset + 1, len(data) - 4 - _SHA1_SIZE):
        end = _record_end(data, start)
        if end is not None and _decode(data[start:end]) is not None:
            return True
    return False
