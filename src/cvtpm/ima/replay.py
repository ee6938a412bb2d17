"""Replay a measurement list into PCR banks: PCR := H_bank(PCR || extend digest)."""

from __future__ import annotations

from collections.abc import Iterable

from cvtpm.ima.entry import BANK_SIZES, Entry
from cvtpm.ima.hashes import hash_function


def replay(
    entries: Iterable[Entry],
    bank: str,
    start: bytes | None = None,
    *,
    pcr: int | None = None,
) -> bytes:
    """The PCR value of `bank` after extending every entry, from `start` or zeros.

    With `pcr` set, only entries logged for that PCR are extended (a policy's
    `pcr=` rule can send entries elsewhere).
    """
    replayer = Replayer([bank], None if start is None else {bank: start}, pcr=pcr)
    for entry in entries:
        replayer.extend(entry)
    return replayer.values[bank]


class Replayer:
    """Incremental replay of one list into a set of banks."""

    def __init__(
        self,
        banks: Iterable[str],
        start: dict[str, bytes] | None = None,
        *,
        pcr: int | None = None,
    ):
        self.values: dict[str, bytes] = {}
        self.count = 0
        self.pcr = pcr
        self._hashes = {}
        for bank in banks:
            size = BANK_SIZES.get(bank)
            if size is None:
                raise ValueError(f"unknown PCR bank {bank!r}")
            value = (start or {}).get(bank, bytes(size))
            if len(value) != size:
                raise ValueError(f"{bank} start value must be {size} bytes")
            self.values[bank] = value
            self._hashes[bank] = hash_function(bank)

    def extend(self, entry: Entry) -> None:
        """Extend every bank with this entry, as ima_pcr_extend() does."""
        self.count += 1
        if self.pcr is not None and entry.pcr != self.pcr:
            return
        values = self.values
        for bank, hash_ in self._hashes.items():
            values[bank] = hash_(values[bank] + entry.pcr_extend_digest(bank)).digest()

    def extend_all(self, entries: Iterable[Entry]) -> None:
        """Extend with every entry in order."""
        for entry in entries:
            self.extend(entry)
