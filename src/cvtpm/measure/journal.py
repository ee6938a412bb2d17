"""A container's measurement list on disk, written ahead of its vTPM's PCR 10.

Each list lives in its own directory (`Paths.lists / NAME`):

- `binary_runtime_measurements`: the kernel's binary format (SHA-1 template
  digests, little-endian), and at the same time the journal: an entry is
  appended and fsync'ed before it is extended, so the file is never behind
  the PCR.  It is the only authority; everything else derives from it.
- `ascii_runtime_measurements`: the kernel's ascii format, rebuilt from the
  binary file when the list is opened and appended to after each entry.  Both
  files hold names as the kernel does: raw bytes, UTF-8 or not.

After a crash the PCR can only be behind the file, never ahead: `reconcile`
extends what is missing, replays everything into a reset TPM, and refuses
anything else.  A record cut short by a crash mid-append (a torn tail; only
the last record can be) is left out of the entries but stays on disk until
`reconcile` finds the PCR equal to a replay of the entries, which proves it
was never extended.  It is then copied to `binary_runtime_measurements.torn-
OFFSET` and cut off exactly.  Damage before the tail is refused, the file
untouched (see cvtpm.measure._scan).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cvtpm.errors import StateError
from cvtpm.ima.ascii import encode_ascii
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import DEFAULT_PCR, Entry
from cvtpm.ima.replay import Replayer
from cvtpm.measure._scan import CorruptJournalError, Scan, scan_journal

__all__ = [
    "ASCII_NAME",
    "BINARY_NAME",
    "CorruptJournalError",
    "Extender",
    "MeasurementList",
    "Scan",
    "extend",
    "read_list",
    "scan_list",
]

log = logging.getLogger(__name__)

BINARY_NAME = "binary_runtime_measurements"
ASCII_NAME = "ascii_runtime_measurements"
TORN_SUFFIX = ".torn-"


class Extender(Protocol):
    """The part of a TPM client the agent needs (cvtpm.tpm.client.TpmClient fits)."""

    def active_banks(self) -> list[str]: ...

    def pcr_read(self, pcr: int, banks: Iterable[str] | None = None) -> dict: ...

    def pcr_extend(self, pcr: int, digests: dict[str, bytes]) -> None: ...


class MeasurementList:
    """One container's list: entries in memory, the binary journal on disk.

    Opening reads the journal and raises CorruptJournalError if it is damaged
    anywhere but at its tail; the file is not changed by opening.
    """

    def __init__(self, directory: Path, pcr: int = DEFAULT_PCR):
        self.directory = Path(directory)
        self.pcr = pcr
        self.lock = threading.RLock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.binary_path = self.directory / BINARY_NAME
        self.ascii_path = self.directory / ASCII_NAME

        # 1. The entries; a torn tail is left where it is until reconcile.
        scan = scan_journal(_read(self.binary_path), self.binary_path)
        self.entries: list[Entry] = scan.entries
        self._size = scan.size
        self.torn = scan.torn
        if self.torn:
            log.warning(
                "%s: %d torn bytes at offset %d after the last entry (a crash "
                "mid-append); left out of the list, kept until reconciled",
                self.binary_path,
                self.torn,
                self._size,
            )
        self._broken: str | None = None

        # 2. The files, appended to from now on.
        self._binary: int | None = os.open(
            self.binary_path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
        self._ascii: int | None = None
        self._update_ascii(None)

    def close(self) -> None:
        """Close the files; the list stays on disk."""
        for fd in (self._binary, self._ascii):
            if fd is not None:
                os.close(fd)
        self._binary = self._ascii = None

    def append(self, entry: Entry) -> None:
        """Write the entry to the journal and make it durable (write + fsync).

        Raises StateError, with the journal as it was, if that fails, if the
        journal still ends in a torn tail (reconcile first), or if an earlier
        failure could not be undone.
        """
        # 1. The journal must end with its last entry.
        if self._broken is not None:
            raise StateError(self._broken)
        if self.torn:
            raise StateError(
                f"{self.binary_path}: ends in {self.torn} torn bytes at offset "
                f"{self._size}; reconcile the list with its vTPM before appending"
            )

        # 2. Write and fsync the record, or leave the journal as it was: no
        # partial or undurable record may stay to be mistaken for one extended.
        record = encode_binary(entry)
        try:
            written = os.write(self._binary, record)
            if written != len(record):
                raise OSError(errno.ENOSPC, f"short write, {written} bytes")
            os.fsync(self._binary)
        except OSError as exc:
            self._undo_append()
            raise StateError(
                f"{self.binary_path}: cannot append entry {len(self.entries)}: {exc}"
            ) from exc
        self._size += len(record)
        self.entries.append(entry)

        # 3. The ascii copy is derived data: its failures do not undo the entry.
        self._update_ascii(entry)

    def reconcile(self, tpm: Extender, banks: list[str] | None = None) -> int:
        """Bring the TPM's PCR up to the list; returns how many entries were extended.

        The PCR must equal the replay of the first n entries for some n (n = 0
        is a reset TPM); entries n.. are then extended.  Any other value means
        the list and the TPM disagree about history, and nothing is touched.
        `banks` are the TPM's active banks, if the caller has just read them.
        """
        banks = list(tpm.active_banks()) if banks is None else banks
        current = tpm.pcr_read(self.pcr, banks)

        # 1. Find the longest prefix of the list whose replay is the PCR.
        replayer = Replayer(banks, pcr=self.pcr)
        matched = 0 if replayer.values == current else None
        for n, entry in enumerate(self.entries, start=1):
            replayer.extend(entry)
            if replayer.values == current:
                matched = n
        if matched is None:
            kept = f", nor its {self.torn} torn bytes (kept)" if self.torn else ""
            raise StateError(
                f"PCR {self.pcr} of the vTPM for {self.directory} matches no prefix "
                f"of its {len(self.entries)}-entry list{kept}; refusing to touch "
                "either (was the vTPM shared, or the list edited?)"
            )

        # 2. The PCR holds no more than the entries: a torn tail after them
        # was never extended, and may go.
        self._set_aside_torn_tail()

        # 3. Extend what the TPM missed, in order.
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

    def _undo_append(self) -> None:
        try:
            os.ftruncate(self._binary, self._size)
        except OSError as exc:
            # The file may end in a partial record now, and O_APPEND would put
            # the next one after it: write nothing more until it is reopened
            # (whose scan sees the partial record as a torn tail).
            self._broken = (
                f"{self.binary_path}: a failed append could not be undone ({exc}); "
                "the list must be reopened before it takes more entries"
            )
            log.error("%s", self._broken)

    def _set_aside_torn_tail(self) -> None:
        """Copy the torn tail to a file of its own, then cut it off exactly."""
        if not self.torn:
            return
        offset = self._size
        with open(self.binary_path, "rb") as f:
            if os.fstat(f.fileno()).st_size != offset + self.torn:
                raise StateError(
                    f"{self.binary_path} changed since it was read; leaving it alone"
                )
            f.seek(offset)
            tail = f.read()

        aside = _free_path(self.directory / f"{BINARY_NAME}{TORN_SUFFIX}{offset}")
        with open(aside, "xb") as f:
            f.write(tail)
            os.fsync(f.fileno())
        _fsync_directory(self.directory)
        os.ftruncate(self._binary, offset)
        os.fsync(self._binary)

        self.torn = 0
        log.warning(
            "%s: moved a torn record (%d bytes at offset %d, never extended into "
            "PCR %d) to %s",
            self.binary_path,
            len(tail),
            offset,
            self.pcr,
            aside.name,
        )

    def _update_ascii(self, entry: Entry | None) -> None:
        """Add `entry` to the ascii copy, rebuilding the file when it is not open."""
        try:
            if self._ascii is None:
                tmp = self.directory / (ASCII_NAME + ".tmp")
                tmp.write_bytes(b"".join(encode_ascii(e) for e in self.entries))
                os.replace(tmp, self.ascii_path)
                self._ascii = os.open(
                    self.ascii_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
                )
            elif entry is not None:
                line = encode_ascii(entry)
                if os.write(self._ascii, line) != len(line):
                    raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            # The binary list has the entry; the copy is rebuilt from it next time.
            log.error(
                "%s: cannot update the ascii copy (%s); it is rebuilt from %s "
                "with the next entry",
                self.ascii_path,
                exc,
                BINARY_NAME,
            )
            if self._ascii is not None:
                os.close(self._ascii)
                self._ascii = None


def extend(tpm: Extender, entry: Entry, banks: Iterable[str], pcr: int) -> None:
    """One TPM2_PCR_Extend of `entry` into every bank, as ima_pcr_extend() does."""
    if entry.pcr != pcr:
        return
    tpm.pcr_extend(pcr, {bank: entry.pcr_extend_digest(bank) for bank in banks})


def scan_list(directory: Path) -> Scan:
    """Read a list on disk without touching it: its entries and any torn tail.

    A list whose file is not written yet has no entries; CorruptJournalError
    if the file is damaged before its tail.
    """
    path = Path(directory) / BINARY_NAME
    return scan_journal(_read(path), path)


def read_list(directory: Path) -> list[Entry]:
    """The entries of a list on disk, without touching it (a torn tail is left out)."""
    return scan_list(directory).entries


RETIRED = ".retired"  # lists/.retired/NAME.TIME: lists of vTPMs that are gone


def retire_list(lists: Path, name: str) -> Path | None:
    """Move the list of `name` aside, kept whole; where it went (None: no list).

    A list belongs to the vTPM its entries were extended into. Once that vTPM
    is deleted, the list can never be replayed against a PCR again, and a new
    vTPM of the same name must start a list of its own.
    """
    source = Path(lists) / name
    if not source.exists():
        return None
    retired = Path(lists) / RETIRED
    retired.mkdir(mode=0o700, exist_ok=True)
    target = _free_path(retired / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}")
    source.rename(target)
    _fsync_directory(Path(lists))
    return target


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _free_path(path: Path) -> Path:
    """`path`, or `path.N` for the first N that does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
