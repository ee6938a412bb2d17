"""`cvtpm log`: the lists the agent writes, printed in the kernel's formats."""

from __future__ import annotations

import json
import os
import random

import pytest
from click.testing import CliRunner

from cvtpm.cli.main import cli, main
from cvtpm.ima.ascii import encode_ascii, parse_ascii
from cvtpm.ima.binary import dump_binary, encode_binary, parse_binary
from cvtpm.ima.entry import boot_aggregate, ima_ng, violation
from cvtpm.measure.journal import ASCII_NAME, BINARY_NAME, MeasurementList

RAW = b"/opt/\xff\xfe/true"
ENTRIES = [
    boot_aggregate(None),
    ima_ng("/bin/sh", bytes(32)),
    violation("/data/w"),
    ima_ng(os.fsdecode(RAW), bytes(32 * [9])),
]


def make_list(state_dir, entries=ENTRIES) -> None:
    """A list for container "c" under the state directory."""
    mlist = MeasurementList(state_dir / "lists" / "c")
    for entry in entries:
        mlist.append(entry)
    mlist.close()


def invoke(tmp_path, *args):
    """Run `cvtpm --state-dir tmp_path log ...` with click's runner."""
    return CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "log", *args])


def run_main(tmp_path, capsys, *args) -> tuple[int, str]:
    """Run the real entry point; its exit code and what it printed on stderr."""
    code = main(["--state-dir", str(tmp_path), "log", *args])
    return code, capsys.readouterr().err


def test_ascii_is_the_file_the_agent_keeps(tmp_path):
    """The default output is byte for byte the ascii list on disk."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c")
    assert result.exit_code == 0
    assert result.stdout_bytes == (tmp_path / "lists/c" / ASCII_NAME).read_bytes()
    assert parse_ascii(result.stdout_bytes) == ENTRIES


def test_names_that_are_not_utf8_print_as_their_bytes(tmp_path):
    """A name with bytes ff fe comes out raw, as the kernel's own list shows it."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.endswith(b" " + RAW + b"\n")
    assert result.stdout_bytes.endswith(encode_ascii(ENTRIES[3]))


def test_binary_is_the_journal(tmp_path):
    """--format binary prints the kernel binary list, which is the journal itself."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c", "--format", "binary")
    assert result.stdout_bytes == (tmp_path / "lists/c" / BINARY_NAME).read_bytes()
    assert RAW + b"\x00" in result.stdout_bytes


def test_bank_lists_carry_that_banks_template_digests(tmp_path):
    """--bank sha256 gives 32-byte template digests, zeros for violations."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c", "--format", "binary", "--bank", "sha256")
    entries = parse_binary(result.stdout_bytes, digest_size=32)
    assert [e.template_digest for e in entries] == [
        e.for_bank("sha256").template_digest for e in ENTRIES
    ]
    assert entries[2].template_digest == bytes(32)


def test_json(tmp_path):
    """--json gives one object per entry, valid UTF-8 JSON whatever the names; a
    name that is not UTF-8 also comes as `path_hex`, its exact bytes."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c", "--json")
    result.stdout_bytes.decode("utf-8")  # strict: no lone surrogates leak out
    data = json.loads(result.output)
    assert [d["path"] for d in data] == [
        "boot_aggregate",
        "/bin/sh",
        "/data/w",
        "/opt/\ufffd\ufffd/true",
    ]
    assert data[2]["violation"] is True
    assert ["path_hex" in d for d in data] == [False, False, False, True]
    assert bytes.fromhex(data[3]["path_hex"]) == RAW


def test_a_torn_tail_is_a_warning(tmp_path, capsys):
    """A journal ending in a torn record prints its entries, warns on stderr, exits
    0, and leaves the file as it is."""
    make_list(tmp_path, ENTRIES[:3])
    path = tmp_path / "lists/c" / BINARY_NAME
    data = path.read_bytes() + encode_binary(ENTRIES[3])[:-4]
    path.write_bytes(data)

    code = main(["--state-dir", str(tmp_path), "log", "c"])
    out, err = capsys.readouterr()

    assert code == 0
    assert out.encode() == b"".join(encode_ascii(e) for e in ENTRIES[:3])
    assert err.startswith(f"cvtpm: warning: {path} ends in 95 torn bytes")
    assert f"at offset {len(dump_binary(ENTRIES[:3]))}" in err
    assert path.read_bytes() == data


def test_damage_before_the_tail_is_an_error(tmp_path, capsys):
    """A journal damaged before valid entries is refused with exit 1, naming the
    file and the byte offset; nothing is printed on stdout."""
    make_list(tmp_path)
    path = tmp_path / "lists/c" / BINARY_NAME
    raw = path.read_bytes()
    at = len(encode_binary(ENTRIES[0]))
    path.write_bytes(raw[:at] + b"GARBAGE" + raw[at:])

    code = main(["--state-dir", str(tmp_path), "log", "c"])
    out, err = capsys.readouterr()

    assert code == 1
    assert err.startswith(f"cvtpm: error: {path}: entry 1, at byte offset {at},")
    assert "Traceback" not in err
    assert out == ""


def test_a_list_of_random_bytes_is_an_error_not_a_torn_tail(tmp_path, capsys):
    """Bytes no record starts with were no crash: exit 1, the file named."""
    make_list(tmp_path, [])
    path = tmp_path / "lists/c" / BINARY_NAME
    path.write_bytes(random.Random(6).randbytes(2000))

    code = main(["--state-dir", str(tmp_path), "log", "c"])
    out, err = capsys.readouterr()

    assert code == 1
    assert err.startswith(f"cvtpm: error: {path}: entry 0, at byte offset 0,")
    assert "PCR index" in err and "torn" not in err
    assert out == ""


@pytest.mark.parametrize("name", ["../x", "", "a/b", "-", ".hidden", "x" * 129])
def test_invalid_names_are_usage_errors(tmp_path, capsys, name):
    """NAME becomes a path: anything but a valid container name exits 2."""
    make_list(tmp_path)
    code, err = run_main(tmp_path, capsys, "--", name)
    assert code == 2
    assert "invalid vTPM name" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bank", "md5"], "Invalid value for '--bank': 'md5' is not one of"),
        (["--format", "xml"], "Invalid value for '--format': 'xml' is not one of"),
    ],
)
def test_unknown_choices_are_usage_errors(tmp_path, capsys, args, message):
    """A bank or a format cvtpm does not have exits 2 with click's message."""
    make_list(tmp_path)
    code, err = run_main(tmp_path, capsys, "c", *args)
    assert code == 2
    assert message in err


def test_unknown_container_is_an_error(tmp_path, capsys):
    """A name without a list fails with exit code 1 and says where it looked."""
    code, err = run_main(tmp_path, capsys, "nope")
    assert code == 1
    assert err.startswith("cvtpm: error: no measurement list for 'nope'")
    assert str(tmp_path / "lists" / "nope") in err
