"""`cvtpm attest` against a vTPM made by the vTPM manager: exit codes and output."""

from __future__ import annotations

import json

import pytest

from cvtpm.cli.main import main
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import boot_aggregate
from tests.attest.conftest import files

pytestmark = pytest.mark.swtpm


def measure(manager, paths, name, entries, extend=True):
    """Append entries to the container's list (and PCR 10, unless told not to)."""
    directory = paths.lists / name
    directory.mkdir(parents=True, exist_ok=True)
    info = manager.get(name)
    with (directory / "binary_runtime_measurements").open("ab") as out:
        for entry in entries:
            out.write(encode_binary(entry))
    if extend:
        with manager.client(name) as tpm:
            for entry in entries:
                tpm.pcr_extend(10, {b: entry.pcr_extend_digest(b) for b in info.banks})


def run(paths, *args) -> int:
    return main(["--state-dir", str(paths.state), "--run-dir", str(paths.run), *args])


def test_attest_exit_codes_follow_the_verdict(manager, paths, capsys, tmp_path):
    """A clean container exits 0; an unlisted extend makes it exit 1 with the reason."""
    manager.create("app")
    measure(manager, paths, "app", [boot_aggregate(None)] + files(5))
    assert run(paths, "attest", "app", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "trusted" and report["verified_index"] == 6

    measure(manager, paths, "app", files(2, start=10))
    assert run(paths, "attest", "app") == 0
    assert "new this time: 2" in capsys.readouterr().out

    # An extend that the list does not show: the PCR matches no boundary.
    measure(manager, paths, "app", files(1, start=90), extend=True)
    (paths.lists / "app" / "binary_runtime_measurements").write_bytes(
        b"".join(
            encode_binary(e)
            for e in [boot_aggregate(None)] + files(5) + files(2, start=10)
        )
    )
    assert run(paths, "attest", "app") == 1
    captured = capsys.readouterr()
    assert "list.pcr_mismatch" in captured.out and "not trusted" in captured.err


def test_policy_file_is_applied(manager, paths, capsys, tmp_path):
    """--policy judges the entries: a file outside the policy makes exit code 1."""
    manager.create("pol")
    allowed = files(2)
    measure(
        manager,
        paths,
        "pol",
        [boot_aggregate(None)] + allowed + files(1, start=7, prefix="/x/bad"),
    )
    policy = {
        "cvtpm_runtime_policy": 1,
        "files": {e.path: [f"sha256:{e.file_digest.hex()}"] for e in allowed},
        "excludes": ["boot_aggregate"],
    }
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    assert run(paths, "attest", "pol", "--policy", str(tmp_path / "policy.json")) == 1
    out = capsys.readouterr().out
    assert "policy." in out and "/x/bad7" in out


def test_policy_create_writes_a_policy(tmp_path, capsys):
    """`cvtpm policy create` hashes a root filesystem's executables into a policy."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").write_bytes(b"#!shell")
    (root / "bin" / "sh").chmod(0o755)
    out = tmp_path / "p.json"
    assert main(["policy", "create", str(root), "-o", str(out)]) == 0
    assert "/bin/sh" in json.loads(out.read_text())["files"]


def test_a_daemon_url_that_is_not_http_is_a_usage_error(paths, capsys):
    """`--daemon localhost:8441` exits 2 with the expected form of the URL."""
    assert run(paths, "attest", "app", "--daemon", "localhost:8441") == 2
    assert "expected http://HOST:PORT" in capsys.readouterr().err


def test_an_unusable_database_is_one_line_and_exit_1(manager, paths, capsys):
    """`--db` naming a database kind cvtpm cannot drive exits 1 with one line."""
    manager.create("app")
    assert run(paths, "attest", "app", "--db", "nosuch://h/db") == 1
    err = capsys.readouterr().err
    assert err.startswith("cvtpm: error: verifier database nosuch://h/db: cannot use")
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_policy_applies_to_its_run_only(manager, paths, capsys, tmp_path):
    """After `attest --policy`, a plain `attest` judges no file again."""
    manager.create("app")
    measure(manager, paths, "app", [boot_aggregate(None)] + files(2))
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"cvtpm_runtime_policy": 1, "files": {}}))
    assert run(paths, "attest", "app", "--policy", str(strict)) == 1
    capsys.readouterr()
    assert run(paths, "attest", "app", "--json") == 0
    assert json.loads(capsys.readouterr().out)["trusted"] is True


def test_unreadable_policies_and_stopped_vtpms_are_one_line(
    manager, paths, capsys, tmp_path
):
    """A binary --policy and a stopped vTPM each give one line and exit 1."""
    manager.create("app")
    measure(manager, paths, "app", [boot_aggregate(None)])
    binary = tmp_path / "policy.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    capsys.readouterr()
    assert run(paths, "attest", "app", "--policy", str(binary)) == 1
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and err.count("\n") == 1

    manager.stop("app")
    assert run(paths, "attest", "app") == 1
    err = capsys.readouterr().err
    assert "start it with `cvtpm vtpm start app`" in err and err.count("\n") == 1


def test_a_recreated_vtpm_replaces_its_local_registration(manager, paths, capsys):
    """The local verifier registers a vTPM made anew under a known name again."""
    manager.create("app")
    measure(manager, paths, "app", [boot_aggregate(None)])
    assert run(paths, "attest", "app") == 0
    manager.delete("app")
    (paths.lists / "app" / "binary_runtime_measurements").unlink()
    manager.create("app")
    measure(manager, paths, "app", [boot_aggregate(None)])
    capsys.readouterr()
    assert run(paths, "attest", "app") == 0
    assert "has a new EK; its old registration is replaced" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../x", "-x", "a" * 129])
def test_bad_names_are_usage_errors(paths, capsys, name):
    """A NAME that no vTPM can have is exit 2."""
    assert run(paths, "attest", name) == 2


def test_trust_stores_without_a_root_are_refused(manager, paths, capsys, tmp_path):
    """An empty --trust directory or a file that is not PEM is named, exit 1."""
    manager.create("app")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(paths, "attest", "app", "--trust", str(empty)) == 1
    assert "has no *.pem or *.crt" in capsys.readouterr().err
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert run(paths, "attest", "app", "--trust", str(junk)) == 1
    assert f"trust store file {junk}" in capsys.readouterr().err
