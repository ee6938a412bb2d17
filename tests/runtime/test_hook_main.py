"""`cvtpm-hook`, the small client runtimes start: arguments, answers, errors.

There are two: the compiled program runtimes run (cvtpm_hook.c) and
hook_main.py, which `cvtpm hook` and `install-hooks --python` use. Every
case that goes through a process runs against both.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from cvtpm import _defaults
from cvtpm.runtime import annotations, hook_main, install
from cvtpm.runtime.hook_main import _parse_args, header_value

# As runtimes run them: the program, and the file on its own without
# site-packages.
HOOKS = {
    "compiled": [str(install.COMPILED_HOOK)],
    "python": [sys.executable, "-I", "-S", hook_main.__file__],
}
ENABLED = {"io.cvtpm.vtpm": "enabled"}


@pytest.fixture(params=sorted(HOOKS))
def hook(request):
    """Run one of the two hooks with `args` and `stdin`."""
    command = HOOKS[request.param]

    def run(*args: str, stdin: bytes = b"", env=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *args], input=stdin, env=env, capture_output=True,
            timeout=60, check=False,
        )  # fmt: skip

    run.command = command
    return run


def state(bundle: Path, annotations: dict | None = None) -> bytes:
    """An OCI state as runc hands it to a createRuntime hook."""
    data = {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 4242}
    data["bundle"] = str(bundle)
    if annotations is not None:
        data["annotations"] = annotations
    return json.dumps(data).encode()


def error_of(done: subprocess.CompletedProcess) -> str:
    """The one-line message of a failed hook, without its prefix."""
    err = done.stderr.decode()
    assert err.startswith("cvtpm-hook: error: "), err
    return err[len("cvtpm-hook: error: ") :].rstrip("\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "which stage?"),
        (["start"], "unexpected argument 'start'"),
        (["poststop", "poststop"], "unexpected argument 'poststop'"),
        (["--run-dir"], "--run-dir needs a directory"),
        (["it's\t\udcff"], "unexpected argument 'it's\\x09\\xff'"),
    ],
)
def test_usage_errors_exit_2(hook, argv, message):
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


def test_help_exits_0(hook):
    """--help prints what the hook is and its exit codes."""
    done = hook("--help")
    assert done.returncode == 0 and b"Exit codes: 0 done" in done.stdout


def test_a_container_that_asked_for_nothing_needs_no_daemon(hook, tmp_path):
    """Without io.cvtpm.vtpm=enabled (state or config.json), nothing is asked."""
    (tmp_path / "config.json").write_text('{"annotations": {"other": "x"}}')
    nowhere = str(tmp_path / "no-daemon-here")
    for stdin in (state(tmp_path), state(tmp_path, {"io.cvtpm.vtpm": "disabled"})):
        done = hook("--run-dir", nowhere, "--json", "create-runtime", stdin=stdin)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"action": "skipped", "name": None}


def test_no_daemon_is_one_line_and_exit_1(hook, tmp_path):
    """A container that asked, with no daemon listening, fails with where and why."""
    done = hook(
        "--run-dir", str(tmp_path), "create-runtime", stdin=state(tmp_path, ENABLED)
    )
    assert done.returncode == 1
    assert error_of(done) == (
        f"cannot reach the cvtpm daemon at {tmp_path}/daemon.sock: No such file or"
        " directory; is `cvtpm daemon` running?"
    )


def test_the_run_dir_comes_from_the_environment(hook, tmp_path):
    """Without --run-dir, CVTPM_RUN_DIR names the daemon's directory."""
    env = {**os.environ, "CVTPM_RUN_DIR": str(tmp_path / "elsewhere")}
    done = hook("poststop", stdin=state(tmp_path, ENABLED), env=env)
    assert f"{tmp_path}/elsewhere/daemon.sock: No such file" in error_of(done)


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b" " * ((1 << 20) + 1), "the OCI state on stdin is larger than 1048576 bytes"),
        (b" \n\t", "no OCI state on stdin (a runtime passes the container's)"),
    ],
)
def test_no_state_or_too_much_is_refused(hook, tmp_path, stdin, message):
    """Nothing, or more than a megabyte, on stdin is not an OCI state."""
    done = hook("--run-dir", str(tmp_path), "poststop", stdin=stdin)
    assert done.returncode == 1 and error_of(done) == message


@pytest.mark.parametrize("stdin", ["closed", "write-only"])
def test_a_stdin_that_cannot_be_read_is_named(hook, tmp_path, stdin):
    """A closed or write-only stdin is one line, exit 1, in both hooks."""
    redirect = "<&-" if stdin == "closed" else "0>/dev/null"
    line = " ".join(f"'{a}'" for a in hook.command)
    done = subprocess.run(
        f"{line} --run-dir {tmp_path} poststop {redirect}",
        shell=True, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert error_of(done) == "cannot read the OCI state on stdin: Bad file descriptor"


@pytest.mark.parametrize("config", ["fifo", "too large", "directory", "deep"])
def test_a_config_json_that_is_no_plain_file_goes_to_the_daemon(
    hook, short_tmp, config
):
    """A FIFO, a huge file or a directory as config.json neither hangs nor eats
    memory: the hook leaves it to the daemon (none here: 'cannot reach')."""
    path = short_tmp / "config.json"
    if config == "fifo":
        os.mkfifo(path)
    elif config == "too large":
        with open(path, "wb") as f:
            f.truncate(hook_main.MAX_CONFIG_SIZE + 1)
    elif config == "directory":
        path.mkdir()
    stdin = b'{"id": "x", "bundle": "%s"}' % str(short_tmp).encode()
    if config == "deep":
        path.write_text('{"annotations": {"other": "1"}}')
        stdin = stdin[:-1] + b', "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"

    done = hook("--run-dir", str(short_tmp), "poststop", stdin=stdin)

    if config == "deep":  # the program never parses below the top level
        assert done.returncode in (0, 1) and b"Traceback" not in done.stderr
    else:
        assert done.returncode == 1 and "cannot reach" in error_of(done)


def serve_once(path: Path, answer: bytes) -> list[bytes]:
    """A unix socket server that reads one request and sends `answer`.

    The request it read is appended to the list returned.
    """
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    requests: list[bytes] = []

    def serve():
        conn, _ = server.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(65536)
        head, _, body = request.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])
        while len(body) < length:
            body += conn.recv(65536)
        requests.append(head + b"\r\n\r\n" + body)
        conn.sendall(answer)
        conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return requests


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n", "the cvtpm daemon's answer is not HTTP"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnope!",
            "the cvtpm daemon's answer is not JSON",
        ),
        (
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 22\r\n\r\n"
            b'{"detail": "no vTPMs"}',
            "no vTPMs",
        ),
        (
            b"HTTP/1.1 409 Conflict\r\n\r\n"
            b'{"other": [1, {"a": "}"}],'
            b' "detail": "caf\\u00e9 \\ud83d\\ude00 \\"x\\""}',
            'caf\u00e9 \U0001f600 "x"',
        ),
        (  # FastAPI's validation errors: a list, not a sentence
            b'HTTP/1.1 422 Unprocessable\r\n\r\n{"detail": [{"msg": "x"}]}',
            "the cvtpm daemon answered 422",
        ),
        (b"HTTP/1.1 500 Oops\r\n\r\n", "the cvtpm daemon answered 500"),
        (b"HTTP/1.1   \r\n\r\n", "the cvtpm daemon's answer is not HTTP"),
        (
            b"HTTP/1.1 abc\x1b\xff\r\n\r\n",
            "the cvtpm daemon's answer has no status: HTTP/1.1 abc\\x1b\\xff",
        ),
        (
            b'HTTP/1.1 409 Conflict\r\n\r\n{"detail": "first", "detail": "second"}',
            "second",
        ),
        (
            b'HTTP/1.1 409 Conflict\r\n\r\n{"detail": "a\\u0000b\\nc\\ud800"}',
            "a\\x00b\\x0ac\ufffd",
        ),
        (  # not UTF-8: no detail to show
            b'HTTP/1.1 409 Conflict\r\n\r\n{"detail": "caf\xe9"}',
            "the cvtpm daemon answered 409",
        ),
        (
            b'HTTP/1.1 409 Conflict\r\n\r\n\xef\xbb\xbf{"detail": "no vTPMs"}',
            "no vTPMs",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"a',
            "the cvtpm daemon's answer is cut short (3 of 50 bytes)",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n{}",
            "the cvtpm daemon's answer is not JSON",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding\r\n\r\n{}",
            "the cvtpm daemon's answer is chunked; expected a length",
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\n{" + b" " * (16 << 20),
            "the cvtpm daemon's answer is larger than 16777216 bytes",
        ),
        (  # C1 controls and line separators do not break the line either
            b'HTTP/1.1 409 X\r\n\r\n{"detail": "a\\u0085b\\u2028c\\u2029"}',
            "a\\x85b\\u2028c\\u2029",
        ),
        (
            b"HTTP/1.1 500 Oops\r\n\r\n" + b"[" * 100_000 + b"]" * 100_000,
            "the cvtpm daemon answered 500",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
            "the cvtpm daemon's answer is chunked; expected a length",
        ),
    ],
)
def test_bad_answers_are_named(hook, short_tmp, answer, message):
    """Something that is not the daemon, and the daemon's refusals, are errors."""
    serve_once(short_tmp / "daemon.sock", answer)
    stdin = state(short_tmp, ENABLED)
    done = hook("--run-dir", str(short_tmp), "poststop", stdin=stdin)
    assert done.returncode == 1
    assert error_of(done) == message


def test_a_run_dir_with_control_characters_is_shown_on_one_line(hook, short_tmp):
    """The socket path in a message has its control bytes escaped."""
    run_dir = f"{short_tmp}/\x01q\nz"
    done = hook("--run-dir", run_dir, "poststop", stdin=state(short_tmp, ENABLED))
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1
    assert error_of(done).startswith(
        f"cannot reach the cvtpm daemon at {short_tmp}/\\x01q\\x0az/daemon.sock:"
    )


def test_a_daemon_that_breaks_off_is_not_called_unreachable(hook, short_tmp):
    """Connected, then cut off before an answer: said so, without the hint that
    the daemon may not be running."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(short_tmp / "daemon.sock"))
    server.listen(1)

    def cut_off():
        conn, _ = server.accept()
        conn.recv(10)  # the rest stays unread: close() resets the connection
        conn.close()
        server.close()

    threading.Thread(target=cut_off, daemon=True).start()
    stdin = state(short_tmp, ENABLED) + b" " * 500_000
    done = hook("--run-dir", str(short_tmp), "poststop", stdin=stdin)

    assert done.returncode == 1
    assert error_of(done).startswith(
        f"the cvtpm daemon at {short_tmp}/daemon.sock broke off the exchange: "
    )


def test_the_request_and_the_answer(hook, short_tmp):
    """One POST of the state to the stage's route; the answer cut at its length."""
    body = state(short_tmp, ENABLED)
    requests = serve_once(
        short_tmp / "daemon.sock",
        b'HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{"action": "x"}trailing',
    )
    done = hook(
        "--run-dir", str(short_tmp), "--state-dir", "/tmp/a b/%x", "--json",
        "createRuntime", stdin=body,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"action": "x"}
    head, _, sent = requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/hooks/createRuntime HTTP/1.1"
    assert f"Content-Length: {len(body)}".encode() in lines
    assert b"X-Cvtpm-State-Dir: /tmp/a%20b/%25x" in lines
    assert sent == body


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


def test_the_compiled_hook_has_the_same_constants():
    """cvtpm_hook.c defines what hook_main.py does."""
    source = install.COMPILED_HOOK.with_name("cvtpm_hook.c").read_text()
    defined = dict(re.findall(r'^#define (\w+) "([^"]*)"', source, re.M))
    for name in ("RUN_DIR", "RUN_DIR_ENV", "STATE_DIR_ENV", "DAEMON_SOCKET"):
        assert defined[name] == getattr(hook_main, name)
    assert defined["ANNOTATION_ENABLE"] == hook_main.ANNOTATION_ENABLE
    assert defined["STATE_DIR_HEADER"] == hook_main.STATE_DIR_HEADER
    assert "#define MAX_STATE_SIZE (1 << 20)" in source
    assert hook_main.MAX_STATE_SIZE == 1 << 20
    assert "#define MAX_ANSWER_SIZE (16 << 20)" in source
    assert hook_main.MAX_ANSWER_SIZE == 16 << 20
    assert f"#define TIMEOUT_SECONDS {hook_main.TIMEOUT:.0f}" in source


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
        (b'{"annotations": {"io.cvtpm.vtpm":\v"ENABLED\x0c"}}', True),
        (b'{"annotations": {"io.cvtpm.vtpm": "no"}}', False),
        (b'{"annotations": {"io.cvtpm.vtpm": "enabledx"}}', False),
        (b'{"annotations": {"io.cvtpm.vtpm": ""}}', False),
        (b'{"annotations": {"io.cvtpm.vtpm": "en\\u0061bled"}}', True),  # escaped
        (b'{"annotations": {"io.cvtpm.vtpm": "enabled', True),  # cut short
        (b'{"annotations": {"io.cvtpm.vtpm": 1}}', True),  # the daemon will say
        (b'{"annotations": {"io.cvtpm.vtpm"}}', True),
        (b'{"annotations": {"other": "1"}}', False),
        (b'{"id": "x", "bundle": "/nonexistent"}', True),  # the daemon will say
        (b'{"id": "x", "bundle": 7}', True),
        # A repeated key counts as its last; an escape may spell the key.
        (b'{"annotations": {"io.cvtpm.vtpm": "no", "io.cvtpm.vtpm": "enabled"}}', True),
        (
            b'{"annotations": {"io.cvtpm.vtpm": "enabled", "io.cvtpm.vtpm": "no"}}',
            False,
        ),
        (b'{"annotations": {"io.cvtpm.vt\\u0070m": "enabled"}}', True),
        (
            b'{"annotations": {"io.cvtpm.vtpm": "no", "io.cvtpm.vt\\u0070m": "on"}}',
            True,
        ),
        # Not ASCII: the daemon's str.strip() takes a no-break space away.
        (b'{"annotations": {"io.cvtpm.vtpm": "enabled\xc2\xa0"}}', True),
        # An empty or null map: config.json decides, as for the daemon.
        (b'{"bundle": "%s", "annotations": {}}', False),
        (b'{"bundle": "%s", "annotations": null}', False),
        (b'{"bundle": "%e", "annotations": { }}', True),
        (b'{"bundle": "%e", "annotations": {"other": "1"}}', False),
        (b'{"id": "x", "bundle": ""}', True),  # not absolute: the daemon refuses
        (b'{"id": "x", "bundle": "."}', True),
        (b'{"bundle": "/nonexistent", "bundle": "%s"}', False),  # the last counts
        (b'{"bundle": "%s", "bundle": "/nonexistent"}', True),
        (b'\xef\xbb\xbf{"bundle": "%s"}', False),  # a byte order mark
        (b"not json", True),
    ],
)
def test_what_goes_to_the_daemon(hook, short_tmp, monkeypatch, state, asks):
    """Only annotations (of the state, else of config.json) without the key skip."""
    (short_tmp / "config.json").write_text('{"annotations": {"other": "1"}}')
    enabled = short_tmp / "enabled"  # %e: a bundle whose config.json asks
    enabled.mkdir()
    (enabled / "config.json").write_text(json.dumps({"annotations": ENABLED}))
    # A config.json in the working directory is no bundle's.
    monkeypatch.chdir(short_tmp)
    state = state.replace(b"%s", str(short_tmp).encode())
    state = state.replace(b"%e", str(enabled).encode())
    done = hook("--run-dir", str(short_tmp), "--json", "create-runtime", stdin=state)
    if asks:
        assert done.returncode == 1 and "cannot reach" in error_of(done)
    else:
        assert done.returncode == 0 and json.loads(done.stdout)["action"] == "skipped"


@pytest.mark.parametrize("escaped", [False, True])
def test_without_annotations_in_the_state_config_json_decides(hook, short_tmp, escaped):
    """runc leaves an empty annotations map out; then config.json is read."""
    bundle = short_tmp / 'the "bundle"'
    bundle.mkdir()
    value = json.dumps(str(bundle))
    if escaped:  # every character as \\uXXXX, as a JSON writer may
        value = '"' + "".join(f"\\u{ord(c):04x}" for c in str(bundle)) + '"'
    stdin = b'{"id": "x", "other": {"bundle": "/"}, "bundle": %s}' % value.encode()
    args = ("--run-dir", str(short_tmp), "--json", "create-runtime")

    (bundle / "config.json").write_text('{"annotations": {"other": "1"}}')
    assert json.loads(hook(*args, stdin=stdin).stdout)["action"] == "skipped"
    (bundle / "config.json").write_text(json.dumps({"annotations": ENABLED}))
    assert "cannot reach" in error_of(hook(*args, stdin=stdin))


def mutations(seeds: list[bytes], alphabet: bytes, count: int, seed: int):
    """`count` copies of the seeds, each with a few bytes cut, added or cut off."""
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at, op = rng.randrange(len(data) + 1), rng.random()
            if op < 0.4 and data:
                del data[at % len(data)]
            elif op < 0.85:
                data[at:at] = bytes([rng.choice(alphabet)])
            else:
                del data[at:]
        yield bytes(data)


def test_the_compiled_hook_decides_as_the_script_does(short_tmp):
    """Over mutated states, both hooks skip or go to the daemon alike."""
    (short_tmp / "config.json").write_text('{"annotations": {"other": "1"}}')
    seeds = [
        b'{"annotations": {"io.cvtpm.vtpm": "enabled"}}',
        b'{"bundle": "%s", "annotations": {"io.cvtpm.vtpm": " Enabled "}}',
        b'{"id": "x", "a": [1, {"b": "}\\""}], "bundle": "%s"}',
    ]
    seeds = [s.replace(b"%s", str(short_tmp).encode()) for s in seeds]
    for stdin in mutations(seeds, b'{}[]":,\\ u0an\t\x0b', 150, seed=6):
        done = subprocess.run(
            [*HOOKS["compiled"], "--run-dir", str(short_tmp), "poststop"],
            input=stdin, capture_output=True, check=False,
        )  # fmt: skip
        if not stdin.strip():
            assert "no OCI state" in error_of(done)
        elif hook_main.asks(stdin):
            assert "cannot reach" in error_of(done), stdin
        elif b'"annotations"' in stdin:
            assert done.returncode == 0, stdin
        else:
            # Not JSON: the script asks the daemon; the program checks only
            # the top level's shape, and may read the config.json it names.
            assert (
                done.returncode in (0, 1)
                and not done.stderr.strip()
                or ("cannot reach" in error_of(done))
            ), stdin


def test_the_compiled_hook_reads_answers_as_the_script_does(short_tmp):
    """Over mutated answers, both hooks report the same outcome."""
    seeds = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b'HTTP/1.1 409 Conflict\r\ncontent-length: 22\r\n\r\n{"detail": "no vTPMs"}',
        b"HTTP/1.1 500 Oops\r\n\r\n",
        b'HTTP/1.1 409 X\r\n\r\n\xef\xbb\xbf{"detail": "d\\u00e9j\xc3\xa0 \\n"}',
    ]
    alphabet = b'{}":\\ 0a\r\n-+\xff\xe9\xc3\x00\x1bu'
    for answer in mutations(seeds, alphabet, 300, seed=7):
        try:
            status, body = hook_main.parse_answer(answer)
            if status == 200:
                expected = (0, body)
            else:
                said = hook_main._detail(body)
                expected = (1, said or f"the cvtpm daemon answered {status}")
        except hook_main.HookError as exc:
            expected = (1, str(exc))
        serve_once(short_tmp / "daemon.sock", answer)
        done = subprocess.run(
            [*HOOKS["compiled"], "--run-dir", str(short_tmp), "--json", "poststop"],
            input=state(short_tmp, ENABLED), capture_output=True, check=False,
        )  # fmt: skip
        (short_tmp / "daemon.sock").unlink()
        if expected[0] == 0:
            assert (done.returncode, done.stdout) == (0, expected[1] + b"\n"), answer
        elif b'"detail"' in answer and "answered 4" in expected[1]:
            # Not valid JSON: the program may still find the detail.
            assert done.returncode == 1, answer
        else:
            assert error_of(done) == expected[1], answer
