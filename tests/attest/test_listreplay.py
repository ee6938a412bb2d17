"""Step 3 on its own: evidence that repeats, skips or shortens verified entries."""

from __future__ import annotations

import dataclasses

import pytest

from cvtpm.attest.evidence import Evidence
from cvtpm.attest.listreplay import replay_list
from cvtpm.attest.verifier import ReplayState
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import Entry, boot_aggregate, ima_legacy
from cvtpm.ima.replay import Replayer
from tests.attest.conftest import files

BANKS = ["sha1", "sha256"]


def listed(legacy: bool) -> list[Entry]:
    """Ten entries; with `legacy`, one in the old `ima` template (the careful path)."""
    entries = [boot_aggregate(None)] + files(9)
    if legacy:
        entries[3] = ima_legacy("/bin/old", bytes(range(20)))
    return entries


def pcr10(entries: list[Entry]) -> dict[str, bytes]:
    replayer = Replayer(BANKS)
    replayer.extend_all(entries)
    return dict(replayer.values)


def evidence(entries: list[Entry], since: int, quoted: list[Entry]) -> Evidence:
    """Evidence carrying `entries` from `since`, with PCR 10 after `quoted`."""
    values = pcr10(quoted)
    return Evidence(
        container="web",
        nonce=b"n" * 20,
        attest=b"",
        signature=b"",
        pcrs={bank: {10: value} for bank, value in values.items()},
        since=since,
        entries=b"".join(encode_binary(e) for e in entries),
        banks=BANKS,
    )


def verified(entries: list[Entry], count: int) -> ReplayState:
    """The state after an earlier attestation verified the first `count` entries."""
    return ReplayState(index=count, values=pcr10(entries[:count]))


def reasons(failures) -> list[tuple[str, int | None]]:
    return [(f.reason, f.index) for f in failures]


@pytest.fixture(params=[False, True], ids=["fast", "careful"])
def entries(request) -> list[Entry]:
    return listed(request.param)


def test_new_entries_only(entries):
    """Evidence from the verified index replays just what is new."""
    state = verified(entries, 6)
    replayed, failures = replay_list(state, evidence(entries[6:], 6, entries), BANKS)
    assert failures == [] and replayed.boundary == 4


def test_whole_list_again_is_checked_against_the_stored_values(entries):
    """Evidence from 0 is accepted when its first entries replay to the stored PCR."""
    state = verified(entries, 6)
    replayed, failures = replay_list(state, evidence(entries, 0, entries), BANKS)
    assert failures == [] and replayed.boundary == 4
    assert replayed.values == pcr10(entries)


def test_a_rewritten_verified_entry_is_named(entries):
    """A verified entry changed in a resent list is list.rewritten."""
    state = verified(entries, 6)
    forged = list(entries)
    forged[2] = files(1, start=77)[0]
    _, failures = replay_list(state, evidence(forged, 0, entries), BANKS)
    assert reasons(failures) == [("list.rewritten", 0)]


def test_verified_entries_reordered_are_rewritten(entries):
    """Two verified entries swapped are list.rewritten."""
    state = verified(entries, 6)
    swapped = list(entries)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    _, failures = replay_list(state, evidence(swapped, 0, entries), BANKS)
    assert reasons(failures) == [("list.rewritten", 0)]


def test_a_list_shorter_than_what_was_verified_is_truncated(entries):
    """A resent list that ends before the verified index is list.truncated there."""
    state = verified(entries, 6)
    _, failures = replay_list(state, evidence(entries[:4], 0, entries), BANKS)
    assert reasons(failures) == [("list.truncated", 4)]
    assert "the list has 4 entries, but 6 entries were verified" in failures[0].message


def test_a_daemon_reporting_an_earlier_end_is_truncated(entries):
    """A daemon asked from 6 that says its list ends at 3 shows a truncated list."""
    state = verified(entries, 6)
    _, failures = replay_list(state, evidence([], 3, entries[:3]), BANKS)
    assert reasons(failures) == [("list.truncated", 3)]


def test_entries_starting_inside_the_verified_part_overlap(entries):
    """Evidence from an index below the verified one but above 0 cannot be checked."""
    state = verified(entries, 6)
    _, failures = replay_list(state, evidence(entries[3:], 3, entries), BANKS)
    assert reasons(failures) == [("list.overlap", 3)]
    assert "send entries from 6, or the whole list from 0" in failures[0].message


def test_entries_starting_after_the_verified_index_leave_a_gap(entries):
    """Evidence that skips entries nobody verified is list.gap."""
    state = verified(entries, 4)
    _, failures = replay_list(state, evidence(entries[6:], 6, entries), BANKS)
    assert reasons(failures) == [("list.gap", 4)]


def test_a_state_without_values_does_not_let_repeats_pass(entries):
    """A state that kept no PCR values cannot vouch for resent entries."""
    state = dataclasses.replace(verified(entries, 6), values={})
    _, failures = replay_list(state, evidence(entries, 0, entries), BANKS)
    assert reasons(failures) == [("list.rewritten", 0)]


def test_bytes_that_are_not_a_list_are_malformed_at_their_entry():
    """Garbage after good entries is list.malformed at the entry it starts."""
    entries = listed(False)
    bad = evidence(entries[:5], 0, entries)
    bad.entries += b"\x0a\x00\x00\x00" + b"\xff" * 30
    _, failures = replay_list(ReplayState(), bad, BANKS)
    assert reasons(failures) == [("list.malformed", 5)]
