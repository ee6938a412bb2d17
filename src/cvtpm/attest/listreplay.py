"""Step 3 of verification: the list, replayed against the quoted PCR 10.

Entries below the verified index were proven by an earlier quote. Evidence may
carry them again only from entry 0, and then they must replay to exactly the
PCR values stored at that index; anything else about them is a failure of its
own: `list.truncated` (the list ends before the verified index),
`list.rewritten` (they are not the entries verified), `list.overlap` (they
start at an index whose PCR values the verifier never kept), `list.gap` (the
evidence starts after the verified index) or `list.malformed` (not a list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from cvtpm.attest import _fastlist
from cvtpm.attest.evidence import IMA_PCR, Evidence
from cvtpm.attest.result import Failure
from cvtpm.errors import ParseError
from cvtpm.ima.binary import parse_binary
from cvtpm.ima.replay import Replayer


class VerifiedState(Protocol):
    """What step 3 reads of a ReplayState: the verified index and PCR 10 there."""

    index: int
    values: dict[str, bytes]


@dataclass
class ListReplay:
    """Where the replay of the new entries met the quoted PCR."""

    entries: list[Any]  # the new entries: Entry objects, or raw slices if `raw`
    boundary: int | None  # how many of them the PCR covers (None: no match)
    values: dict[str, bytes]  # running values at the boundary
    raw: bool = False
    digest_size: int = 20

    def entry(self, position: int) -> Any:
        """The Entry at `position`, decoded if it was kept raw (ParseError if bad)."""
        item = self.entries[position]
        return _fastlist.entry(item, self.digest_size) if self.raw else item


def replay_list(
    state: VerifiedState, evidence: Evidence, banks: list[str]
) -> tuple[ListReplay | None, list[Failure]]:
    """Step 3: extend from the stored values until PCR 10 of every bank matches."""
    # 1. The evidence starts at or before the verified index.
    since, index = evidence.since, state.index
    if since > index:
        message = f"entries start at {since}, verified up to {index}"
        return None, [Failure("list.gap", message, index=index)]

    # 2. Its bytes are a list: most take the fast path over raw slices.
    raws = _fastlist.split(evidence.entries, evidence.digest_size)
    entries: list[Any]
    if raws is not None:
        entries = raws
    else:
        try:
            entries = parse_binary(evidence.entries, evidence.digest_size)
        except ParseError as exc:
            at = since if exc.entry is None else since + exc.entry
            return None, [Failure("list.malformed", exc.message, index=at)]

    # 3. Entries already verified are all there, and are those verified.
    known = index - since
    failures = _check_verified(state, entries, since, raws is not None)
    if failures:
        return None, failures

    # 4. The new entries, replayed until the quoted PCR 10 of every bank.
    quoted = {bank: evidence.pcrs[bank][IMA_PCR] for bank in banks}
    if raws is not None:
        return replay_raw(state, raws[known:], quoted, evidence.digest_size)
    return replay_entries(state, entries[known:], quoted)


def _check_verified(
    state: VerifiedState, entries: list[Any], since: int, raw: bool
) -> list[Failure]:
    """Failures of the entries below the verified index that the evidence repeats."""
    index = state.index
    known = index - since
    if len(entries) < known:
        length = since + len(entries)
        message = (
            f"the list has {length} {_entries(length)}, but {index}"
            f" {_entries(index)} were verified before"
        )
        return [Failure("list.truncated", message, index=length)]
    if known == 0:
        return []
    if since > 0:
        message = (
            f"entries start at {since}, inside the {index} verified before, where"
            f" no PCR value was kept to check them against; send entries from"
            f" {index}, or the whole list from 0"
        )
        return [Failure("list.overlap", message, index=since)]

    # A state always keeps the values of the banks it verified; one without
    # any (never written by verify) must not let the entries pass unchecked.
    banks = list(state.values) or ["sha256"]
    if raw:
        values = _fastlist.extend_all(entries[:known], banks)
    else:
        replayer = Replayer(banks)
        replayer.extend_all(entries[:known])
        values = replayer.values
    if values != state.values:
        message = (
            f"entries 0 to {index - 1} do not replay to the PCR 10 values verified"
            " at that index: they were changed, reordered or replaced"
        )
        return [Failure("list.rewritten", message, index=0)]
    return []


def replay_raw(
    state: VerifiedState,
    raws: list[_fastlist.Raw],
    quoted: dict[str, bytes],
    digest_size: int = 20,
) -> tuple[ListReplay, list[Failure]]:
    """Like replay_entries, over raw (pcr, template, digest, data) slices."""
    boundary, values = _fastlist.replay(raws, state.values, quoted)
    replayed = ListReplay(raws, boundary, values, True, digest_size)
    return replayed, [] if boundary is not None else [_mismatch(state.index)]


def replay_entries(
    state: VerifiedState, entries: list[Any], quoted: dict[str, bytes]
) -> tuple[ListReplay, list[Failure]]:
    """Extend `entries` (those after state.index) until the quoted values are met."""
    replayer = Replayer(list(quoted), dict(state.values) or None)
    if replayer.values == quoted:
        return ListReplay(entries, 0, dict(replayer.values)), []
    # Compare one bank per entry and the others only when it matches: the
    # extends dominate the cost, the comparison should not add to it.
    first = next(iter(quoted))
    for count, entry in enumerate(entries, start=1):
        replayer.extend(entry)
        if replayer.values[first] == quoted[first] and replayer.values == quoted:
            return ListReplay(entries, count, dict(replayer.values)), []

    return ListReplay(entries, None, {}), [_mismatch(state.index)]


def _mismatch(index: int) -> Failure:
    message = f"PCR 10 matches no entry boundary from entry {index} on"
    return Failure("list.pcr_mismatch", message, index=index)


def _entries(count: int) -> str:
    return "entry" if count == 1 else "entries"
