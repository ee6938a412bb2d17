"""`cvtpm vtpm` as a user types it: output, --json, and exit codes."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from cvtpm.cli.main import main
from cvtpm.errors import TpmError
from cvtpm.tpm.client import TpmClient

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


def test_a_vtpm_whose_swtpm_died_shows_as_down(cvtpm, monkeypatch):
    """Recorded running, its swtpm gone: `list` and `show` say "down" and how
    to bring it back; a PCR that cannot be read is said in text too."""
    created = json.loads(cvtpm("vtpm", "create", "web", "--json")[1])
    os.kill(created["pid"], signal.SIGKILL)
    waited = os.waitid(os.P_PID, created["pid"], os.WEXITED | os.WNOWAIT)
    assert waited.si_pid == created["pid"]

    code, out, _ = cvtpm("vtpm", "show", "web")
    assert code == 0
    assert "state:     down" in out
    assert "`cvtpm vtpm start web` restarts it" in out
    assert "down" in cvtpm("vtpm", "list")[1].splitlines()[1]

    assert cvtpm("vtpm", "start", "web")[0] == 0
    assert "state:     running" in cvtpm("vtpm", "show", "web")[1]

    def unreadable(self, pcr, banks=None):
        raise TpmError("TPM2_PCR_Read failed: the TPM is in failure mode")

    monkeypatch.setattr(TpmClient, "pcr_read", unreadable)
    code, out, _ = cvtpm("vtpm", "show", "web")
    assert code == 0
    assert "PCR 10:    cannot be read: TPM2_PCR_Read failed" in out


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


@pytest.mark.parametrize("command", [["list"], ["show", "web"], ["start", "web"]])
def test_a_state_directory_that_is_not_there_is_not_made(tmp_path, capsys, command):
    """A mistyped --state-dir is said, not quietly begun anew (only `create` may)."""
    state = tmp_path / "typo"

    code = main(
        ["--state-dir", str(state), "--run-dir", str(tmp_path / "r"), "vtpm"] + command
    )
    err = capsys.readouterr().err

    assert code == 1
    assert err == (
        f"cvtpm: error: no cvtpm state directory {state}: no vTPM was made there"
        " (is --state-dir right?)\n"
    )
    assert not state.exists()
