"""`cvtpm-hook`, the small client runtimes start: arguments, answers, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from cvtpm import _defaults
from cvtpm.runtime import annotations, hook_main
from cvtpm.runtime.hook_main import (
    HookError,
    _parse_args,
    header_value,
    parse_answer,
    run,
)

# As runtimes run it: the file on its own, without site-packages.
HOOK = [sys.executable, "-I", "-S", hook_main.__file__]


def state(bundle: Path, annotations: dict | None = None) -> bytes:
    """An OCI state as runc hands it to a createRuntime hook."""
    data = {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 4242}
    data["bundle"] = str(bundle)
    if annotations is not None:
        data["annotations"] = annotations
    return json.dumps(data).encode()


def hook(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HOOK, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "which stage?"),
        (["start"], "unexpected argument 'start'"),
        (["poststop", "poststop"], "unexpected argument 'poststop'"),
        (["--run-dir"], "--run-dir needs a directory"),
    ],
)
def test_usage_errors_exit_2(argv, message):
    """A missing or unknown stage, or an option without its value, is exit 2."""
    done = hook(*argv)
    assert done.returncode == 2
    assert (
        message in done.stderr.decode() and "usage: cvtpm-hook" in done.stderr.decode()
    )


def test_options_and_stage_names():
    """Both spellings of createRuntime, --json and the directories are taken."""
    assert _parse_args(["--json", "--run-dir", "/r", "createRuntime"]) == {
        "stage": "createRuntime",
        "run_dir": "/r",
        "state_dir": None,
        "as_json": True,
    }
    assert _parse_args(["--state-dir", "/s", "create-runtime"])["state_dir"] == "/s"
    assert _parse_args(["--help"]) is None


def test_a_container_that_asked_for_nothing_needs_no_daemon(tmp_path):
    """Without io.cvtpm.vtpm=enabled (state or config.json), nothing is asked."""
    (tmp_path / "config.json").write_text('{"annotations": {"other": "x"}}')
    nowhere = str(tmp_path / "no-daemon-here")
    for stdin in (state(tmp_path), state(tmp_path, {"io.cvtpm.vtpm": "disabled"})):
        done = hook("--run-dir", nowhere, "--json", "create-runtime", stdin=stdin)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["action"] == "skipped"


def test_no_daemon_is_one_line_and_exit_1(tmp_path):
    """A container that asked, with no daemon listening, fails with where and why."""
    done = hook(
        "--run-dir",
        str(tmp_path),
        "create-runtime",
        stdin=state(tmp_path, {"io.cvtpm.vtpm": "enabled"}),
    )
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.startswith(
        f"cvtpm-hook: error: cannot reach the cvtpm daemon at {tmp_path}"
    )
    assert "is `cvtpm daemon` running?" in err and err.count("\n") == 1


def test_an_oversized_state_is_refused(tmp_path):
    """More than a megabyte on stdin is not an OCI state."""
    with pytest.raises(HookError, match="larger than"):
        run(b" " * ((1 << 20) + 1), "poststop", run_dir=str(tmp_path))


def serve_once(path: Path, answer: bytes) -> threading.Thread:
    """A unix socket server that reads one request and sends `answer`."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(answer)
        conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n", "is not HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!", "is not JSON"),
        (
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 22\r\n\r\n"
            b'{"detail": "no vTPMs"}',
            "^no vTPMs$",
        ),
        (b"HTTP/1.1 500 Oops\r\n\r\n", "answered 500"),
    ],
)
def test_bad_answers_are_named(short_tmp, answer, message):
    """Something that is not the daemon, and the daemon's refusals, are errors."""
    serve_once(short_tmp / "daemon.sock", answer)
    with pytest.raises(HookError, match=message):
        run(state(short_tmp, {"io.cvtpm.vtpm": "enabled"}), "poststop", str(short_tmp))


def test_a_content_length_bounds_the_answer():
    """Bytes after Content-Length are not part of the JSON."""
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}trailing"
    assert parse_answer(raw) == (200, b"{}")


@pytest.mark.parametrize("path", ["/var/lib/cvtpm", "/tmp/a b/%x", "/tmp/\xe9t\xe9"])
def test_state_dir_header_round_trips(path):
    """The --state-dir header is printable ASCII and decodes to the same path."""
    value = header_value(path)
    assert value.isascii() and value.isprintable() and " " not in value
    assert os.fsdecode(unquote_to_bytes(value)) == path


def test_its_constants_are_cvtpms():
    """The stand-alone hook agrees with the modules it cannot import."""
    assert hook_main.RUN_DIR == _defaults.RUN_DIR
    assert hook_main.RUN_DIR_ENV == _defaults.RUN_DIR_ENV
    assert hook_main.STATE_DIR_ENV == _defaults.STATE_DIR_ENV
    assert hook_main.DAEMON_SOCKET == _defaults.DAEMON_SOCKET
    assert hook_main.ANNOTATION_ENABLE == annotations.ANNOTATION_ENABLE


def test_it_imports_no_part_of_cvtpm():
    """Run with -I -S, the hook loads only the standard library's core."""
    probe = (
        "import sys, runpy; runpy.run_path(sys.argv[1]); "
        "print([m for m in sys.modules if m.startswith(('cvtpm', 'json', 'socket'))])"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, hook_main.__file__],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("state", "asks"),
    [
        (b'{"annotations": {"io.cvtpm.vtpm": "enabled"}}', True),
        (b'{"annotations": {"io.cvtpm.vtpm" : " Enabled "}}', True),
        (b'{"annotations": {"io.cvtpm.vtpm": "no"}}', False),
        (b'{"annotations": {"io.cvtpm.vtpm": "en\\u0061bled"}}', True),  # escaped
        (b'{"annotations": {"io.cvtpm.vtpm": 1}}', True),  # the daemon will say
        (b'{"annotations": {"other": "1"}}', False),
        (b'{"id": "x", "bundle": "/nonexistent"}', True),  # the daemon will say
        (b"not json", True),
    ],
)
def test_what_goes_to_the_daemon(state, asks):
    """Only annotations (of the state, else of config.json) without the key skip."""
    assert hook_main.asks(state) is asks


def test_without_annotations_in_the_state_config_json_decides(tmp_path):
    """runc leaves an empty annotations map out; then config.json is read."""
    state = b'{"id": "x", "bundle": "%s"}' % str(tmp_path).encode()
    (tmp_path / "config.json").write_text('{"annotations": {"other": "1"}}')
    assert hook_main.asks(state) is False
    (tmp_path / "config.json").write_text(
        '{"annotations": {"io.cvtpm.vtpm": "enabled"}}'
    )
    assert hook_main.asks(state) is True
