"""Entry builders, boot_aggregate, extend digests and incremental replay."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from cvtpm.ima import (
    BANK_SIZES,
    Replayer,
    boot_aggregate,
    ima_buf,
    ima_ng,
    ima_sig,
    parse_binary,
    replay,
    violation,
)


def fake_pcrs(bank: str) -> dict[int, bytes]:
    """PCR i holds bytes([i + 1]) * size: distinct, easy to write down."""
    size = BANK_SIZES[bank]
    return {i: bytes([i + 1]) * size for i in range(24)}


def test_boot_aggregate_without_tpm_is_zero():
    """No TPM: the boot_aggregate digest is all zeros of the configured algorithm."""
    entry = boot_aggregate(None)

    assert (entry.path, entry.digest_alg, entry.file_digest) == (
        "boot_aggregate",
        "sha256",
        bytes(32),
    )
    assert not entry.is_violation


def test_boot_aggregate_rule():
    """sha1 hashes PCRs 0-7; other banks hash PCRs 0-9 (ima_crypto.c)."""
    sha1 = boot_aggregate({"sha1": fake_pcrs("sha1")}, digest_alg="sha1")
    sha256 = boot_aggregate({"sha256": fake_pcrs("sha256")})

    pcrs1, pcrs256 = fake_pcrs("sha1"), fake_pcrs("sha256")
    assert (
        sha1.file_digest == hashlib.sha1(b"".join(pcrs1[i] for i in range(8))).digest()
    )
    assert (
        sha256.file_digest
        == hashlib.sha256(b"".join(pcrs256[i] for i in range(10))).digest()
    )


def test_boot_aggregate_bank_choice():
    """The configured algorithm's bank if present, else sha256, else sha1."""
    both = {"sha1": fake_pcrs("sha1"), "sha256": fake_pcrs("sha256")}
    only_sha1 = {"sha1": fake_pcrs("sha1")}

    assert boot_aggregate(both, digest_alg="sha384").digest_alg == "sha256"
    assert boot_aggregate(only_sha1, digest_alg="sha256").digest_alg == "sha1"
    assert boot_aggregate({"sha384": fake_pcrs("sha384")}, digest_alg="sha384")


def test_boot_aggregate_matches_evmctl(tmp_path):
    """evmctl ima_boot_aggregate computes the same digest from the same PCRs."""
    for bank in ("sha1", "sha256"):
        pcrs = fake_pcrs(bank)
        pcr_file = tmp_path / bank
        pcr_file.write_text("".join(f"PCR-{i:02d}: {pcrs[i].hex()}\n" for i in pcrs))

        result = subprocess.run(
            ["evmctl", "ima_boot_aggregate", "--pcrs", f"{bank},{pcr_file}"],
            capture_output=True,
            text=True,
            check=True,
        )

        entry = boot_aggregate({bank: pcrs}, digest_alg=bank)
        assert result.stdout.strip() == f"{bank}:{entry.file_digest.hex()}"


def test_boot_aggregate_needs_all_pcrs():
    """Missing PCR 9 in a sha256 bank is a programming error."""
    pcrs = fake_pcrs("sha256")
    del pcrs[9]

    with pytest.raises(ValueError, match="PCR 9"):
        boot_aggregate({"sha256": pcrs})


def test_builders_check_their_input():
    """Wrong digest sizes, unknown templates and bad PCRs are ValueErrors."""
    with pytest.raises(ValueError):
        ima_ng("/x", bytes(20))  # sha256 needs 32 bytes
    with pytest.raises(ValueError):
        ima_ng("/x", bytes(32), pcr=24)
    with pytest.raises(ValueError):
        violation("/x", "ima-buf")


def test_ima_buf_digest_is_of_the_buffer():
    """ima_buf() logs H(buffer) with the chosen algorithm."""
    entry = ima_buf("kernel_version", b"6.1.0", "sha384")

    assert entry.file_digest == hashlib.sha384(b"6.1.0").digest()
    assert entry.buffer == b"6.1.0"


def test_extend_digests():
    """sha1 extends the template digest, other banks H_bank(data), violations 0xFF."""
    entry = ima_sig("/bin/sh", bytes(32), signature=b"\x03")
    bad = violation("/x")

    assert entry.pcr_extend_digest("sha1") == entry.template_digest
    for bank, size in BANK_SIZES.items():
        if bank != "sha1":
            expected = hashlib.new(bank, entry.template_data).digest()
            assert entry.pcr_extend_digest(bank) == expected
        assert bad.pcr_extend_digest(bank) == b"\xff" * size
    with pytest.raises(ValueError):
        entry.pcr_extend_digest("md5")


def test_replay_by_hand():
    """Replay is PCR := H(PCR || extend digest) from zeros, or from `start`."""
    entries = [boot_aggregate(None), ima_ng("/a", bytes(32)), violation("/b")]

    value = bytes(32)
    for entry in entries:
        value = hashlib.sha256(value + entry.pcr_extend_digest("sha256")).digest()
    assert replay(entries, "sha256") == value
    start = b"\x01" * 20
    assert replay(entries[1:], "sha1", start) == replay(
        entries[1:], "sha1", start=start
    )
    assert replay(entries[1:], "sha1", start) != replay(entries[1:], "sha1")


def test_replayer_is_incremental(ibmtss_bytes):
    """Replaying in two halves, resuming from the first half's values, equals one go."""
    entries = parse_binary(ibmtss_bytes)
    banks = list(BANK_SIZES)
    first = Replayer(banks)
    first.extend_all(entries[:100])

    second = Replayer(banks, start=dict(first.values))
    second.extend_all(entries[100:])

    assert (first.count, second.count) == (100, 262)
    for bank in banks:
        assert second.values[bank] == replay(entries, bank)


def test_replay_only_one_pcr():
    """With pcr=, entries logged for other PCRs are skipped."""
    entries = [ima_ng("/a", bytes(32)), ima_ng("/b", bytes(32), pcr=11)]

    assert replay(entries, "sha256", pcr=10) == replay(entries[:1], "sha256")


def test_replayer_rejects_bad_banks_and_starts():
    """Unknown banks and start values of the wrong size are ValueErrors."""
    with pytest.raises(ValueError):
        Replayer(["md5"])
    with pytest.raises(ValueError):
        Replayer(["sha256"], start={"sha256": bytes(20)})
