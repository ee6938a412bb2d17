"""The list journal: raw names, torn tails, corruption, and reconciling a real vTPM."""

from __future__ import annotations

import os
import random

import pytest

from cvtpm.errors import StateError
from cvtpm.ima.ascii import encode_ascii
from cvtpm.ima.binary import dump_binary, encode_binary
from cvtpm.ima.entry import boot_aggregate, ima_ng, violation
from cvtpm.ima.replay import replay
from cvtpm.measure.journal import (
    ASCII_NAME,
    BINARY_NAME,
    CorruptJournalError,
    MeasurementList,
    extend,
    read_list,
    scan_list,
)


def sample_entries():
    """boot_aggregate, two files and a violation."""
    return [
        boot_aggregate(None),
        ima_ng("/bin/a", bytes(range(32))),
        violation("/data/w"),
        ima_ng("/bin/b", bytes(32 * [7])),
    ]


def write_list(directory, entries) -> MeasurementList:
    """A list holding `entries`, as the agent writes it."""
    mlist = MeasurementList(directory)
    for entry in entries:
        mlist.append(entry)
    return mlist


def test_reopen_reads_back_what_was_appended(tmp_path):
    """Entries survive a reopen, and the ascii copy matches the binary list."""
    write_list(tmp_path, sample_entries()).close()
    reopened = MeasurementList(tmp_path)
    assert reopened.entries == sample_entries()
    assert (tmp_path / ASCII_NAME).read_text().count("\n") == 4


def test_names_that_are_not_utf8_are_kept_byte_for_byte(tmp_path):
    """A name with bytes like ff fe is appended, reopened and written to both files
    exactly as the kernel would hold it."""
    raw = b"/opt/\xff\xfe/true"
    entries = [boot_aggregate(None), ima_ng(os.fsdecode(raw), bytes(32))]

    write_list(tmp_path, entries).close()
    reopened = MeasurementList(tmp_path)

    assert reopened.entries == entries
    assert reopened.entries[1].path_bytes == raw
    assert raw + b"\x00" in (tmp_path / BINARY_NAME).read_bytes()
    ascii_bytes = (tmp_path / ASCII_NAME).read_bytes()
    assert ascii_bytes == b"".join(encode_ascii(e) for e in entries)
    assert b" " + raw + b"\n" in ascii_bytes


def last_record_cuts():
    """Every length the last record of sample_entries() can be cut to (1.. all)."""
    return range(1, len(encode_binary(sample_entries()[-1])) + 1)


@pytest.mark.parametrize("cut", last_record_cuts())
def test_a_torn_last_record_is_left_out_and_left_on_disk(tmp_path, cut):
    """A last record cut at any byte is dropped from the entries, never misread,
    and the file keeps every byte until reconcile decides."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    torn = path.read_bytes()[:-cut]
    path.write_bytes(torn)

    reopened = MeasurementList(tmp_path)

    assert reopened.entries == sample_entries()[:3]
    assert reopened.torn == len(torn) - len(dump_binary(sample_entries()[:3]))
    assert path.read_bytes() == torn
    assert scan_list(tmp_path).torn == reopened.torn


def test_no_append_over_a_torn_tail_before_reconcile(tmp_path):
    """Appending after a torn tail would bury it mid-file: refused, file untouched."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    torn = path.read_bytes()[:-7]
    path.write_bytes(torn)
    mlist = MeasurementList(tmp_path)

    with pytest.raises(StateError, match="reconcile"):
        mlist.append(ima_ng("/bin/c", bytes(32)))

    assert path.read_bytes() == torn
    assert mlist.entries == sample_entries()[:3]


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path):
    """A tail of zeros (a crash after the size grew) is not an entry, and stays."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    data = path.read_bytes() + bytes(100)
    path.write_bytes(data)

    mlist = MeasurementList(tmp_path)

    assert mlist.entries == sample_entries()
    assert mlist.torn == 100
    assert path.read_bytes() == data


def test_a_whole_last_record_that_does_not_decode_is_refused(tmp_path):
    """A last record with the SHA-1 of its own data was written so, not torn:
    it is refused like damage, and nothing is set aside."""
    import hashlib

    from cvtpm.ima.entry import Entry

    data = b"\x28\0\0\0sha999:\0" + bytes(32) + b"\x05\0\0\0/evil"
    bad = Entry(10, "ima-ng", data, hashlib.sha1(data).digest(), "sha256", b"", "?")
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    damaged = path.read_bytes() + encode_binary(bad)
    path.write_bytes(damaged)

    with pytest.raises(CorruptJournalError, match="sha999") as info:
        MeasurementList(tmp_path)
    assert info.value.index == len(sample_entries())
    assert "not torn by a crash" in str(info.value)
    assert "no valid entry follows" in str(info.value)
    assert path.read_bytes() == damaged


def corrupt_cases():
    """(name, damaged journal, offset of the damaged record) for sample_entries()."""
    entries = sample_entries()
    raw = dump_binary(entries)
    second = len(encode_binary(entries[0]))
    third = second + len(encode_binary(entries[1]))
    flipped = bytearray(raw)
    flipped[30] ^= 0xFF  # inside the template name of boot_aggregate's record
    digest = bytearray(raw)
    digest[second + 4] ^= 0x01  # the template digest of the second record
    return [
        ("flipped name", bytes(flipped), 0),
        ("wrong digest", bytes(digest), second),
        ("inserted bytes", raw[:third] + b"GARBAGE!" + raw[third:], third),
        ("zeros inside", raw[:second] + bytes(64) + raw[second:], second),
        ("cut record", raw[:second] + raw[second + 10 :], second),
    ]


@pytest.mark.parametrize(
    ("data", "offset"),
    [case[1:] for case in corrupt_cases()],
    ids=[case[0] for case in corrupt_cases()],
)
def test_damage_before_good_records_is_refused(tmp_path, data, offset):
    """Damage with valid records after it is refused, naming the file and the byte
    offset; the journal and its ascii copy are left exactly as they were."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    path.write_bytes(data)
    ascii_before = (tmp_path / ASCII_NAME).read_bytes()

    with pytest.raises(CorruptJournalError) as info:
        MeasurementList(tmp_path)
    with pytest.raises(CorruptJournalError):
        read_list(tmp_path)

    assert info.value.offset == offset
    assert f"{path}: entry " in str(info.value)
    assert f"at byte offset {offset}," in str(info.value)
    assert path.read_bytes() == data
    assert (tmp_path / ASCII_NAME).read_bytes() == ascii_before


def test_a_failed_append_leaves_the_journal_as_it_was(tmp_path, monkeypatch):
    """When fsync fails the record is cut off again and the error says which list."""
    mlist = write_list(tmp_path, sample_entries()[:2])
    before = (tmp_path / BINARY_NAME).read_bytes()

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError, match=f"{tmp_path}.*cannot append entry 2"):
        mlist.append(ima_ng("/bin/c", bytes(32)))
    monkeypatch.undo()

    assert (tmp_path / BINARY_NAME).read_bytes() == before
    assert mlist.entries == sample_entries()[:2]
    mlist.append(sample_entries()[2])
    assert read_list(tmp_path) == sample_entries()[:3]


def test_an_ascii_failure_does_not_undo_the_entry(tmp_path, monkeypatch, caplog):
    """The ascii copy is derived: if writing it fails the entry stays recorded (it
    is durable, and may be extended), and the copy is rebuilt with the next one."""
    mlist = write_list(tmp_path, sample_entries()[:1])
    real_write = os.write

    def write(fd, data):
        if fd == mlist._ascii:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    mlist.append(sample_entries()[1])
    monkeypatch.undo()

    assert read_list(tmp_path) == sample_entries()[:2]
    assert "cannot update the ascii copy" in caplog.text
    mlist.append(sample_entries()[2])
    assert (tmp_path / ASCII_NAME).read_bytes() == b"".join(
        encode_ascii(e) for e in sample_entries()[:3]
    )


@pytest.mark.swtpm
def test_reconcile_extends_what_the_tpm_missed(tmp_path, swtpm_factory):
    """A PCR behind the journal by k entries gets exactly those k extended."""
    tpm = swtpm_factory()
    mlist = write_list(tmp_path / "l", sample_entries())
    with tpm.client() as client:
        banks = client.active_banks()
        extend(client, mlist.entries[0], banks, 10)
        assert mlist.reconcile(client) == 3
        assert mlist.reconcile(client) == 0
    assert tpm.pcr10() == replay(sample_entries(), "sha256")


@pytest.mark.swtpm
def test_reconcile_replays_into_a_reset_tpm(tmp_path, swtpm_factory):
    """After an swtpm restart (PCR 10 zero) the whole list is replayed."""
    tpm = swtpm_factory()
    mlist = write_list(tmp_path / "l", sample_entries())
    with tpm.client() as client:
        mlist.reconcile(client)
    tpm.stop()
    tpm.start()
    with tpm.client() as client:
        assert mlist.reconcile(client) == 4
    assert tpm.pcr10("sha1") == replay(sample_entries(), "sha1")


@pytest.mark.swtpm
def test_reconcile_refuses_a_pcr_it_cannot_explain(tmp_path, swtpm_factory):
    """A PCR that is no replay of a prefix of the list is left alone, with an error."""
    tpm = swtpm_factory()
    mlist = write_list(tmp_path / "l", sample_entries())
    with tpm.client() as client:
        extend(client, ima_ng("/elsewhere", bytes(32)), client.active_banks(), 10)
        before = client.pcr_read(10)
        with pytest.raises(StateError, match="matches no prefix"):
            mlist.reconcile(client)
        assert client.pcr_read(10) == before
    assert read_list(tmp_path / "l") == sample_entries()


@pytest.mark.swtpm
def test_reconcile_sets_a_torn_tail_aside(tmp_path, swtpm_factory, caplog):
    """Once the PCR matches the entries, the torn bytes are copied to a .torn file
    and cut off exactly; the next entry follows the last good one."""
    tpm = swtpm_factory()
    entries = sample_entries()
    write_list(tmp_path, entries[:3]).close()
    path = tmp_path / BINARY_NAME
    good = path.read_bytes()
    tail = encode_binary(entries[3])[:-9]
    path.write_bytes(good + tail)

    mlist = MeasurementList(tmp_path)
    with tpm.client() as client:
        assert mlist.reconcile(client) == 3
        mlist.append(entries[3])
        extend(client, entries[3], client.active_banks(), 10)

    assert path.read_bytes() == dump_binary(entries)
    assert (tmp_path / f"{BINARY_NAME}.torn-{len(good)}").read_bytes() == tail
    assert f"moved a torn record ({len(tail)} bytes at offset {len(good)}" in (
        caplog.text
    )
    assert tpm.pcr10() == replay(entries, "sha256")


@pytest.mark.swtpm
def test_a_refused_reconcile_keeps_the_torn_tail(tmp_path, swtpm_factory):
    """If the PCR matches no prefix, nothing is decided: the torn bytes stay."""
    tpm = swtpm_factory()
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    data = path.read_bytes()[:-5]
    path.write_bytes(data)

    mlist = MeasurementList(tmp_path)
    with tpm.client() as client:
        extend(client, ima_ng("/elsewhere", bytes(32)), client.active_banks(), 10)
        with pytest.raises(StateError, match="torn bytes"):
            mlist.reconcile(client)

    assert path.read_bytes() == data
    assert not list(tmp_path.glob("*.torn-*"))


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        # A file of random bytes: its first "PCR index" is far past 23.
        (random.Random(6).randbytes(300), "PCR index"),
        # PCR 10, a digest, then a template name no list holds.
        (b"\x0a\0\0\0" + bytes(20) + b"\x06\0\0\0imx-ng", "template name"),
        # A name length past any name's.
        (b"\x0a\0\0\0" + bytes(20) + b"\x00\x10\0\0ima-ng", "template name"),
    ],
    ids=["random", "unknown-template", "long-name"],
)
def test_bytes_that_start_no_record_are_damage_not_a_torn_tail(tmp_path, tail, reason):
    """A crash leaves a record's first bytes (or zeros): a header field no
    record has was never an append, and is refused, the file left as it is."""
    write_list(tmp_path, sample_entries()).close()
    path = tmp_path / BINARY_NAME
    damaged = path.read_bytes() + tail
    path.write_bytes(damaged)

    with pytest.raises(CorruptJournalError, match=reason) as info:
        MeasurementList(tmp_path)
    assert info.value.index == len(sample_entries())
    assert path.read_bytes() == damaged


def _across_a_sector(tmp_path) -> tuple[bytes, bytes, int]:
    """A journal of whole entries whose last record crosses the file's first
    sector boundary (512): the bytes before that record, the record, and
    where in the record the boundary lies."""
    before = dump_binary(sample_entries()[:3])
    for n in range(1, 512):
        filler = encode_binary(ima_ng("/" + "f" * n, bytes(32)))
        if 512 - 40 <= len(before) + len(filler) <= 512 - 20:
            break
    before += filler
    return before, encode_binary(sample_entries()[3]), 512 - len(before)


@pytest.mark.parametrize("written", ["first-sector", "header-only", "cut-short"])
def test_what_a_crash_leaves_of_a_record_is_a_torn_tail(tmp_path, written):
    """A record whose sectors did not all reach the disk: the file ends early,
    or reads zeros from a sector boundary on."""
    before, record, boundary = _across_a_sector(tmp_path)
    tail = {
        "first-sector": record[:boundary] + bytes(len(record) - boundary),
        "header-only": record[:30],
        "cut-short": record[:boundary],
    }[written]
    (tmp_path / BINARY_NAME).write_bytes(before + tail)

    mlist = MeasurementList(tmp_path)

    assert len(mlist.entries) == 4
    assert mlist.torn == len(tail)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("bit", "damaged after it was written"),
        ("mid-sector-zeros", "damaged after it was written"),
        ("huge-data", "template data is said to be"),
    ],
)
def test_a_whole_record_damaged_after_it_was_written_is_refused(
    tmp_path, damage, reason
):
    """Bytes a crash cannot leave: a changed bit in a record whose bytes are
    all there, zeros from inside a sector, a length past any record's. Taken
    for torn, the entry (extended already) would be set aside and lost."""
    before, record, boundary = _across_a_sector(tmp_path)
    tail = bytearray(record)
    if damage == "bit":
        tail[-5] ^= 0x10
    elif damage == "mid-sector-zeros":
        tail[boundary + 3 :] = bytes(len(tail) - boundary - 3)
    else:
        at = 4 + 20 + 4 + len(b"ima-ng")
        tail[at : at + 4] = (1 << 30).to_bytes(4, "little")
    (tmp_path / BINARY_NAME).write_bytes(before + tail)

    with pytest.raises(CorruptJournalError, match=reason) as info:
        MeasurementList(tmp_path)
    assert info.value.index == 4
