"""Commands given what the host cannot do: one line, an exit code, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cvtpm.cli.main import main

CVTPM = [sys.executable, "-m", "cvtpm.cli.main"]


def run(tmp_path, capsys, *args) -> tuple[int, str]:
    base = ["--state-dir", str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")]
    code = main([*base, *args])
    return code, capsys.readouterr().err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def test_policy_create_into_a_missing_directory(tmp_path, capsys):
    """-o into a directory that does not exist is exit 1, naming the file."""
    (tmp_path / "rootfs").mkdir()
    out = tmp_path / "no" / "such" / "policy.json"
    code, err = run(tmp_path, capsys, "policy", "create", str(tmp_path / "rootfs"),
                    "-o", str(out))  # fmt: skip
    assert code == 1 and f"cannot write the policy {out}: No such file" in err


def test_policy_create_warns_about_an_empty_rootfs_and_takes_known_algs(
    tmp_path, capsys
):
    """An empty rootfs gets a warning; a digest no list logs is a usage error."""
    (tmp_path / "rootfs").mkdir()
    code, err = run(tmp_path, capsys, "policy", "create", str(tmp_path / "rootfs"))
    assert code == 0 and "no executable or library found" in err
    code, _ = run(tmp_path, capsys, "policy", "create", str(tmp_path), "--alg", "md5")
    assert code == 2


def test_policy_create_refuses_fifos(tmp_path, capsys):
    """A FIFO as ROOTFS or as -o is one line and exit 1, never a wait; as a
    --bind source it is named in a warning."""
    (tmp_path / "rootfs" / "bin").mkdir(parents=True)
    (tmp_path / "rootfs" / "bin" / "sh").write_bytes(b"sh")
    (tmp_path / "rootfs" / "bin" / "sh").chmod(0o755)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rootfs = str(tmp_path / "rootfs")

    code, err = run(tmp_path, capsys, "policy", "create", str(fifo))
    assert code == 1 and one_line(err) and f"cannot read {fifo}: Not a dir" in err
    code, err = run(tmp_path, capsys, "policy", "create", rootfs, "-o", str(fifo))
    assert code == 1 and one_line(err) and f"the policy {fifo} is not a regular" in err
    code, err = run(tmp_path, capsys, "policy", "create", rootfs, "--bind", str(fifo))
    assert code == 0 and f"warning: --bind {fifo} is no file or directory" in err


def test_install_hooks_into_a_file(tmp_path, capsys):
    """A --hooks-dir below a regular file is exit 1 with the path."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(tmp_path, capsys, "install-hooks", "--hooks-dir",
                    str(blocker / "hooks.d"), "--no-cdi")  # fmt: skip
    assert code == 1 and one_line(err) and str(blocker) in err


def test_a_full_disk_is_one_line(tmp_path):
    """Output that cannot be written (ENOSPC) is exit 1, not an internal error."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*CVTPM, "install-hooks", "--print-runc"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("cvtpm: error: No space left on device")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "99999 is not in the range"),
        (["--host", "256.1.1.1"], "cannot listen on 256.1.1.1"),
    ],
)
def test_verifier_addresses(tmp_path, args, message, monkeypatch):
    """A port out of range is exit 2; an address that cannot be bound, exit 1."""
    monkeypatch.setenv("CVTPM_VERIFIER_TOKEN", "a-token-long-enough-for-this")
    ca = tmp_path / "trust.pem"
    from cvtpm.ca.authority import LocalCa

    ca.write_text(LocalCa(tmp_path / "ca").root_pem.decode() if False else "")
    done = subprocess.run(
        [*CVTPM, "--state-dir", str(tmp_path / "s"), "verifier", "serve",
         "--db", f"sqlite:///{tmp_path / 'v.db'}", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.returncode == (2 if "range" in message else 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("measure func=BPRM_CHECK foo\n", "policy line 1: unsupported token 'foo'"),
        (b"\xff\xfe", "not a text file"),
    ],
)
def test_run_checks_its_ima_policy_first(tmp_path, capsys, content, message):
    """`cvtpm run --policy` names what is wrong with the file, exit 2."""
    policy = tmp_path / "policy"
    if isinstance(content, bytes):
        policy.write_bytes(content)
    else:
        policy.write_text(content)
    (tmp_path / "rootfs").mkdir()
    code, err = run(tmp_path, capsys, "run", "--policy", str(policy),
                    str(tmp_path / "rootfs"), "--", "true")  # fmt: skip
    assert code == 2 and message in err and one_line(err)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--bind=/nonexistent/x", "/nonexistent/x does not exist"),
        ("-eA\nB=1", "expected KEY=VALUE on one line"),
        ("--parent=../x", "invalid vTPM name"),
    ],
)
def test_run_checks_its_options_first(tmp_path, capsys, option, message):
    """Bad --bind, -e and --parent values are usage errors before anything runs."""
    (tmp_path / "rootfs").mkdir()
    code, err = run(tmp_path, capsys, "run", option, str(tmp_path / "rootfs"),
                    "--", "true")  # fmt: skip
    assert code == 2 and message in err


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_special_files_are_refused_not_read(tmp_path, capsys, special):
    """A FIFO (which would block) or /dev/zero (which never ends) as --policy."""
    import os

    path = tmp_path / "fifo"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path = special
    (tmp_path / "rootfs").mkdir()
    code, err = run(tmp_path, capsys, "run", "--policy", str(path),
                    str(tmp_path / "rootfs"), "--", "true")  # fmt: skip
    assert code == 2 and "is not a regular file" in err


def test_a_fifo_token_file_is_refused(tmp_path):
    """verifier serve --token-file on a FIFO says so instead of waiting forever."""
    import os

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    done = subprocess.run(
        [*CVTPM, "--state-dir", str(tmp_path), "verifier", "serve",
         "--token-file", str(fifo)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "is not a regular file" in done.stderr


def test_policy_create_with_binds(tmp_path, capsys):
    """--bind takes `cvtpm run`'s HOST[:INSIDE]; a bad one is a usage error."""
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "tool").write_bytes(b"tool")
    (tmp_path / "tool").chmod(0o755)
    rootfs = str(tmp_path / "rootfs")

    code = main(["policy", "create", rootfs, "--bind", f"{tmp_path}/tool:/opt/tool"])
    out = capsys.readouterr().out
    assert code == 0 and '"/opt/tool"' in out

    code, err = run(tmp_path, capsys, "policy", "create", rootfs, "--bind", "rel:/x")
    assert code == 2 and one_line(err) and "both paths must be absolute" in err
    code, err = run(tmp_path, capsys, "policy", "create", rootfs, "--bind", "/nope")
    assert code == 2 and one_line(err) and "/nope does not exist" in err
