"""`cvtpm log`: the lists the agent writes, printed in the kernel's formats."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cvtpm.cli.main import cli
from cvtpm.ima.ascii import parse_ascii
from cvtpm.ima.binary import parse_binary
from cvtpm.ima.entry import boot_aggregate, ima_ng, violation
from cvtpm.measure.journal import ASCII_NAME, BINARY_NAME, MeasurementList

ENTRIES = [boot_aggregate(None), ima_ng("/bin/sh", bytes(32)), violation("/data/w")]


def make_list(state_dir) -> None:
    """A list for container "c" under the state directory."""
    mlist = MeasurementList(state_dir / "lists" / "c")
    for entry in ENTRIES:
        mlist.append(entry)
    mlist.close()


def invoke(tmp_path, *args):
    """Run `cvtpm --state-dir tmp_path log ...`."""
    return CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "log", *args])


def test_ascii_is_the_file_the_agent_keeps(tmp_path):
    """The default output is byte for byte the ascii list on disk."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c")
    assert result.exit_code == 0
    assert result.output == (tmp_path / "lists/c" / ASCII_NAME).read_text()
    assert parse_ascii(result.output) == ENTRIES


def test_binary_is_the_journal(tmp_path):
    """--format binary prints the kernel binary list, which is the journal itself."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c", "--format", "binary")
    assert result.stdout_bytes == (tmp_path / "lists/c" / BINARY_NAME).read_bytes()


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
    """--json gives one object per entry."""
    make_list(tmp_path)
    result = invoke(tmp_path, "c", "--json")
    data = json.loads(result.output)
    assert [d["path"] for d in data] == ["boot_aggregate", "/bin/sh", "/data/w"]
    assert data[2]["violation"] is True


def test_unknown_container_is_an_error(tmp_path):
    """A name without a list fails with exit code 1 and says where it looked."""
    code_result = invoke(tmp_path, "nope")
    assert code_result.exit_code != 0
    from cvtpm.cli.main import main

    assert main(["--state-dir", str(tmp_path), "log", "nope"]) == 1
