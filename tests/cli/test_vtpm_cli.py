"""`cvtpm vtpm` as a user types it: output, --json, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvtpm.cli.main import main

pytestmark = pytest.mark.swtpm


@pytest.fixture
def cvtpm(paths, capsys):
    """Run `cvtpm ARGS` on the test's tree; returns (exit code, stdout, stderr)."""
    made = []

    def run(*args: str):
        code = main(
            ["--state-dir", str(paths.state), "--run-dir", str(paths.run), *args]
        )
        out, err = capsys.readouterr()
        if args[:2] == ("vtpm", "create") and code == 0:
            made.append(args[2])
        return code, out, err

    yield run
    for name in made:
        run("vtpm", "delete", name)


def test_create_show_stop_start_delete(cvtpm):
    """The whole lifecycle from the command line, with JSON a program can read."""
    code, out, _ = cvtpm("vtpm", "create", "web", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["name"] == "web" and created["state"] == "running"
    assert "BEGIN CERTIFICATE" in created["ek_certs_pem"]["ecc"]

    code, out, _ = cvtpm("vtpm", "show", "web", "--json")
    assert code == 0 and json.loads(out)["pcr10"]["sha256"] == "00" * 32

    assert cvtpm("vtpm", "stop", "web")[0] == 0
    code, out, _ = cvtpm("vtpm", "start", "web", "--json")
    assert code == 0 and json.loads(out)["resumed"] is True

    code, out, _ = cvtpm("vtpm", "list")
    assert code == 0 and "web" in out and "running" in out

    assert cvtpm("vtpm", "delete", "web")[0] == 0
    assert json.loads(cvtpm("vtpm", "list", "--json")[1]) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("vtpm", "show", "nope"), 1, "no vTPM named 'nope'"),
        (("vtpm", "start", "nope"), 1, "no vTPM named 'nope'"),
        (("vtpm", "create", "a/b"), 2, "invalid vTPM name"),
        (("vtpm", "create", "x", "--ek", "dsa"), 2, "Invalid value for '--ek'"),
        (("vtpm", "create", "x", "--banks", "sha3"), 2, "unknown PCR bank sha3"),
        (("vtpm", "create", "x", "--banks", ""), 2, "has an empty bank name"),
        (("vtpm", "create", "x", "--banks", "sha1,,sha256"), 2, "empty bank name"),
        (("vtpm", "frobnicate"), 2, "No such command"),
    ],
)
def test_bad_input_gives_a_clear_error_and_exit_code(cvtpm, args, code, message):
    """Unknown names fail (1), bad arguments are usage errors (2); no traceback,
    and the error is one line."""
    got, out, err = cvtpm(*args)

    assert got == code
    assert message in err
    assert "Traceback" not in out + err
    assert err.startswith("cvtpm: error: ") and len(err.strip().splitlines()) == 1


def test_creating_a_taken_name_fails_and_keeps_the_first(cvtpm):
    """A second create of the same name is refused without touching the first vTPM."""
    assert cvtpm("vtpm", "create", "dup")[0] == 0
    first = json.loads(cvtpm("vtpm", "show", "dup", "--json")[1])

    code, _, err = cvtpm("vtpm", "create", "dup")

    assert code == 1 and "already exists" in err
    again = json.loads(cvtpm("vtpm", "show", "dup", "--json")[1])
    assert again["uuid"] == first["uuid"] and again["state"] == "running"


def test_delete_keeps_the_list_aside(cvtpm, paths):
    """`vtpm delete` moves the vTPM's list to lists/.retired, whole."""
    assert cvtpm("vtpm", "create", "gone")[0] == 0
    listed = paths.lists / "gone"
    listed.mkdir(parents=True)
    (listed / "binary_runtime_measurements").write_bytes(b"recorded")

    code, out, _ = cvtpm("vtpm", "delete", "gone", "--json")
    assert code == 0
    kept = json.loads(out)["list_kept_in"]
    assert not listed.exists()
    assert (paths.lists / ".retired").is_dir()
    assert (Path(kept) / "binary_runtime_measurements").read_bytes() == b"recorded"
