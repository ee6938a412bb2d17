"""The verifier's fast list path agrees with cvtpm.ima and the policy evaluator."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from cvtpm.attest import _fastlist
from cvtpm.attest.policy import Digest, PolicyEvaluator, RuntimePolicy
from cvtpm.errors import ParseError
from cvtpm.ima.ascii import parse_ascii
from cvtpm.ima.binary import dump_binary, encode_binary, parse_binary
from cvtpm.ima.entry import boot_aggregate, ima_legacy, ima_ng, ima_sig, violation
from cvtpm.ima.replay import replay

ASSETS = Path(__file__).resolve().parent.parent / "assets"
IBMTSS = ASSETS / "ibmtss-ima-sig.binary_runtime_measurements"
BANKS = ["sha1", "sha256", "sha384", "sha512"]


def as_raw(entries) -> list[_fastlist.Raw]:
    return [
        (e.pcr, e.template_name.encode(), e.template_digest, e.template_data)
        for e in entries
    ]


def mixed_list():
    """Entries of every fast template, with a violation among them."""
    return [
        boot_aggregate(None),
        ima_ng("/bin/a", hashlib.sha256(b"a").digest()),
        violation("/tmp/racy"),
        ima_sig("/bin/b", hashlib.sha256(b"b").digest(), signature=b"\x03\x02\x04sig"),
        ima_ng("/bin/c", hashlib.sha256(b"c").digest()),
    ]


def test_real_binary_list_splits_and_replays_to_the_known_pcrs():
    """The ibmtss list splits into 362 entries whose replay equals cvtpm.ima's."""
    data = IBMTSS.read_bytes()
    raws = _fastlist.split(data, 20)
    entries = parse_binary(data)
    assert raws == as_raw(entries)
    quoted = {bank: replay(entries, bank) for bank in BANKS}
    assert quoted["sha1"].hex() == "9be6bac02bf18d09d17e726c2df00bca4e8831ea"
    assert _fastlist.replay(raws, {}, quoted) == (362, quoted)
    assert _fastlist.replay(raws, {}, {"sha1": quoted["sha1"]})[0] == 362
    assert _fastlist.bad_templates(raws) == []


def test_real_ascii_lists_split_like_the_ascii_parser():
    """Every line of the real ascii lists gives the data cvtpm.ima.ascii rebuilds."""
    for name in (
        "rpi-ima-ng.ascii_runtime_measurements",
        "signed-ima-sig-ima-buf.ascii_runtime_measurements",
    ):
        text = (ASSETS / name).read_text()
        assert _fastlist.split_ascii(text) == as_raw(parse_ascii(text))


def test_violations_and_boundaries_replay_like_the_replayer():
    """A lagging PCR is met at the same boundary, violations extend 0xFF."""
    entries = mixed_list()
    raws = as_raw(entries)
    for cut in range(len(entries) + 1):
        quoted = {bank: replay(entries[:cut], bank) for bank in BANKS}
        assert _fastlist.replay(raws, {}, quoted)[0] == cut
        assert _fastlist.replay(raws, {}, {"sha1": quoted["sha1"]})[0] == cut


def test_legacy_template_takes_the_careful_path():
    """A list with the legacy `ima` template is left to cvtpm.ima's parser."""
    data = dump_binary([ima_legacy("/bin/x", bytes(20)), ima_ng("/y", bytes(32))])
    assert _fastlist.split(data, 20) is None


def test_truncated_lists_are_never_split():
    """A list cut inside an entry is refused by the fast path and by the parser."""
    data = dump_binary(mixed_list())
    ends = {0}
    for raw in _fastlist.split(data, 20):
        ends.add(max(ends) + 4 + 20 + 4 + len(raw[1]) + 4 + len(raw[3]))
    for size in range(len(data)):
        if size in ends:
            continue
        assert _fastlist.split(data[:size], 20) is None
        with pytest.raises(ParseError):
            parse_binary(data[:size])


def test_template_tampering_is_found():
    """A changed path with the old template digest is reported by position."""
    raws = as_raw(mixed_list())
    pcr, name, digest, data = raws[1]
    raws[1] = (pcr, name, digest, data.replace(b"/bin/a", b"/bin/z"))
    assert _fastlist.bad_templates(raws) == [1]


def test_only_plainly_allowed_entries_skip_the_evaluator():
    """Entries skipped by the shortcut are exactly ones the evaluator allows."""
    entries = mixed_list()
    policy = PolicyEvaluator(
        RuntimePolicy(
            digests={
                "/bin/a": frozenset({Digest("sha256", entries[1].file_digest)}),
                "/bin/b": frozenset({Digest("sha256", entries[3].file_digest)}),
                "/bin/c": frozenset({Digest("sha256", bytes(32))}),
            }
        )
    )
    allowed = _fastlist.allowed_templates(policy)
    needed = _fastlist.needing_policy(as_raw(entries), allowed)
    assert needed == [0, 2, 3, 4]
    for i, entry in enumerate(entries):
        if i not in needed:
            assert policy.evaluate(entry, i) == []
    assert policy.evaluate(entries[4], 4)  # digest not allowed: the evaluator says so


def test_a_violation_is_judged_even_with_allowed_template_data():
    """An all-zero template digest goes to the evaluator whatever its data says."""
    allowed_entry = ima_ng("/bin/a", hashlib.sha256(b"a").digest())
    policy = PolicyEvaluator(
        RuntimePolicy(
            digests={"/bin/a": frozenset({Digest("sha256", allowed_entry.file_digest)})}
        )
    )
    allowed = _fastlist.allowed_templates(policy)
    pcr, name, _, data = as_raw([allowed_entry])[0]
    assert data in allowed
    raws = [(pcr, name, bytes(20), data), (pcr, name, b"\1" * 20, data)]
    assert _fastlist.needing_policy(raws, allowed) == [0]


def test_known_template_digests_still_catch_a_wrong_digest():
    """With the policy's own digests, an allowed entry with a bad digest is found.

    The shortcut compares instead of hashing; it must report exactly what
    hashing reports, for allowed and unknown entries and for violations.
    """
    entries = mixed_list()
    policy = PolicyEvaluator(
        RuntimePolicy(
            digests={"/bin/a": frozenset({Digest("sha256", entries[1].file_digest)})}
        )
    )
    known = _fastlist.allowed_templates(policy)
    raws = as_raw(entries)
    assert raws[1][3] in known  # /bin/a is allowed, so it takes the shortcut
    assert known[raws[1][3]] == hashlib.sha1(raws[1][3]).digest()
    assert _fastlist.bad_templates(raws, known) == _fastlist.bad_templates(raws) == []

    pcr, name, digest, data = raws[1]
    raws[1] = (pcr, name, b"\x01" * 20, data)  # allowed data, forged digest
    pcr, name, digest, data = raws[3]
    raws[3] = (pcr, name, digest, data.replace(b"/bin/b", b"/bin/z"))  # unknown data
    raws.append((10, b"ima-ng", bytes(20), raws[1][3]))  # a violation: never bad
    assert (
        _fastlist.bad_templates(raws, known) == _fastlist.bad_templates(raws) == [1, 3]
    )


def test_violations_are_found_in_lists_of_longer_template_digests():
    """With 32-byte template digests, an all-zero one is still a violation: it
    extends 0xFF.., as cvtpm.ima replays it, and is never a bad template."""
    entries = mixed_list()
    data = b"".join(
        encode_binary(
            replace(
                e,
                template_digest=bytes(32)
                if not any(e.template_digest)
                else hashlib.sha256(e.template_data).digest(),
            )
        )
        for e in entries
    )
    raws = _fastlist.split(data, 32)
    expected = replay(parse_binary(data, 32), "sha1")

    assert _fastlist.replay(raws, {}, {"sha1": expected}) == (
        len(entries),
        {"sha1": expected},
    )
    violation = next(i for i, e in enumerate(entries) if not any(e.template_digest))
    assert violation not in _fastlist.bad_templates(raws)
    assert violation in _fastlist.needing_policy(raws, {})


def test_pcr_out_of_range_and_other_templates_take_the_careful_path():
    """An entry for PCR 24 or with an unknown template name is not split."""
    data = bytearray(dump_binary(mixed_list()))
    for offset, value in ((0, b"\x18\x00\x00\x00"), (28, b"ima-nx")):
        changed = bytearray(data)
        changed[offset : offset + len(value)] = value
        assert _fastlist.split(bytes(changed), 20) is None


def test_extend_all_equals_the_replayer_in_every_bank():
    """Every bank extended through every entry is what cvtpm.ima replays."""
    entries = mixed_list()
    values = _fastlist.extend_all(as_raw(entries), BANKS)
    assert values == {bank: replay(entries, bank) for bank in BANKS}
    assert _fastlist.extend_all([], ["sha256"]) == {"sha256": bytes(32)}


def framed(data: bytes, digest_size: int = 20):
    """The framing rule split follows, as plainly as it can be written."""
    import struct

    out, pos = [], 0
    while pos < len(data):
        head = data[pos : pos + 4 + digest_size + 4]
        if len(head) < 4 + digest_size + 4:
            return None
        pcr, digest, name_len = struct.unpack(f"<I{digest_size}sI", head)
        pos += len(head)
        name = data[pos : pos + name_len]
        pos += name_len
        size = data[pos : pos + 4]
        if pcr >= 24 or name not in (b"ima-ng", b"ima-sig", b"ima-buf"):
            return None
        if len(size) < 4 or pos + 4 + int.from_bytes(size, "little") > len(data):
            return None
        end = pos + 4 + int.from_bytes(size, "little")
        out.append((pcr, name, digest, data[pos + 4 : end]))
        pos = end
    return out


def test_mutated_lists_split_by_the_framing_rule():
    """Whatever bytes change, split gives what the framing rule gives (or None).

    Where cvtpm.ima also parses the changed list, its entries are the same.
    """
    import random

    data = dump_binary(mixed_list())
    rng = random.Random(7)
    parsed = 0
    for _ in range(3000):
        changed = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            changed[rng.randrange(len(changed))] = rng.choice((0, 1, 6, 0xFF))
        changed = bytes(changed)
        raws = _fastlist.split(changed, 20)
        assert raws == framed(changed)
        try:
            entries = parse_binary(changed)
        except ParseError:
            continue
        parsed += 1
        assert raws is None or raws == as_raw(entries)
    assert parsed > 100


def test_loops_refuse_entries_that_are_not_raw_tuples():
    """A wrong shape is a TypeError, never a crash or a silent pass."""
    good = as_raw(mixed_list())
    for bad in ([(10, b"ima-ng", "digest", b"")], [(10, b"ima-ng")], [None]):
        with pytest.raises(TypeError):
            _fastlist.bad_templates(good + bad)
        with pytest.raises(TypeError):
            _fastlist.needing_policy(good + bad, {})
        with pytest.raises(TypeError):
            _fastlist.extend_all(good + bad, ["sha1"])


def test_a_dict_key_that_changes_the_list_cannot_crash_the_loops():
    """Python code a lookup runs (a key's __eq__) may empty the list meanwhile:
    the loops keep what they read alive and stop at the list's new end."""
    from cvtpm.attest import _rawlist

    data = b"x" * 100
    raws = [(10, b"ima-ng", b"\1" * 20, data)] * 1000

    class Clearing:
        def __hash__(self):
            return hash(data)

        def __eq__(self, other):
            raws.clear()
            return False

    for loop, table in (
        (_rawlist.needing_policy, {Clearing(): 1}),
        (_rawlist.bad_templates, {Clearing(): b"a"}),
    ):
        raws[:] = [(10, b"ima-ng", b"\1" * 20, data)] * 1000
        assert loop(raws, table) == [0]

    class Hashing(bytes):
        def __hash__(self):
            raws.clear()
            return 1

    raws[:] = [(10, b"ima-ng", b"\1" * 20, Hashing(b"y" * 1000))]
    with pytest.raises(TypeError):
        _rawlist.needing_policy(raws, {})


def test_sizes_and_banks_the_parser_does_not_know_are_refused():
    """Digest sizes other than 20, 32, 48 and 64, and banks other than the four."""
    from cvtpm.attest import _rawlist

    raws = as_raw(mixed_list())
    with pytest.raises(ValueError, match="digest size 7"):
        _rawlist.split(b"\x0a\0\0\0" + b"\1" * 7 + b"\x06\0\0\0ima-ng\0\0\0\0", 7)
    for bank in ("md5", "SHA1", "sha1\0junk", "sm3"):
        with pytest.raises(ValueError, match="no PCR bank"):
            _rawlist.replay(raws, [bank], [bytes(20)], None)


def test_longer_template_digests_are_checked_with_their_own_hash():
    """A 32-byte template digest is SHA-256 of the data, as the parser checks it."""
    entries = [
        replace(e, template_digest=hashlib.sha256(e.template_data).digest())
        if any(e.template_digest)
        else replace(e, template_digest=bytes(32))
        for e in mixed_list()
    ]
    raws = as_raw(entries)
    assert _fastlist.bad_templates(raws) == []
    assert all(e.template_digest_matches() for e in entries)

    pcr, name, digest, data = raws[1]
    raws[1] = (pcr, name, digest, data.replace(b"/bin/a", b"/bin/z"))
    raws[3] = (10, b"ima-ng", b"\1" * 10, raws[3][3])  # no bank has 10 bytes
    assert _fastlist.bad_templates(raws) == [1, 3]


def test_malformed_flags_exactly_what_the_parser_cannot_decode():
    """Template data the C check passes decodes; what it flags does not, or is
    left to the parser. Fields are mutated one byte at a time, and cut."""
    import random

    from cvtpm.ima.template import unpack, unpack_fast

    raws = as_raw(mixed_list())
    rng = random.Random(11)
    cases = []
    for _ in range(4000):
        pcr, name, digest, data = raws[rng.randrange(len(raws))]
        changed = bytearray(data)
        if rng.random() < 0.2:
            changed = changed[: rng.randrange(len(changed))]
        else:
            changed[rng.randrange(len(changed))] = rng.choice((0, 0x3A, 1, 0xFF))
        cases.append((pcr, name, digest, bytes(changed)))
    flagged = set(_fastlist.malformed(cases))
    assert 0 < len(flagged) < len(cases)
    for i, (_, name, _, data) in enumerate(cases):
        assert (i in flagged) == (unpack_fast(name.decode(), data) is None)
        if i not in flagged:
            unpack(name.decode(), data)  # raises ParseError if it does not decode
    assert _fastlist.malformed(raws) == []
    d_field_only = raws[1][3][: -(4 + len(b"/bin/a\0"))]
    empty_name = (10, b"ima-ng", b"\1" * 20, d_field_only + bytes(4))
    assert _fastlist.malformed([empty_name]) == [0]
    assert unpack_fast("ima-ng", empty_name[3]) is None
    with pytest.raises(ParseError, match="not NUL-terminated"):
        unpack("ima-ng", empty_name[3])


def test_a_policy_path_with_a_nul_allows_nothing_outright():
    """An entry named "/bin/ok" NUL "/evil" does not decode, so a policy path
    holding a NUL must not let it skip the parser."""
    evil = hashlib.sha256(b"evil").digest()
    policy = PolicyEvaluator(
        RuntimePolicy(digests={"/bin/ok\0/evil": frozenset({Digest("sha256", evil)})})
    )
    allowed = _fastlist.allowed_templates(policy)
    raw = as_raw([ima_ng("/bin/ok", evil)])[0]
    data = raw[3].replace(b"\x08\0\0\0/bin/ok\0", b"\x0e\0\0\0/bin/ok\0/evil\0")
    assert allowed == {}
    assert _fastlist.needing_policy([(10, b"ima-ng", raw[2], data)], allowed) == [0]
