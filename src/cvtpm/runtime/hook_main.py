"""The OCI hook runc and podman run when a container starts.

    python3 -I -S hook_main.py [--run-dir DIR] [--state-dir DIR] [--json] STAGE
    cvtpm-hook [--run-dir DIR] [--state-dir DIR] [--json] STAGE

STAGE is create-runtime (or createRuntime), or poststop for configurations
made before the daemon tore containers down by itself. The hook hands the
container's state (stdin) to the cvtpm daemon on its unix socket, where the
stage runs (cvtpm.server.hooks), and reports the answer.

A runtime starts it for every container, so its start-up time is every
container's. The hooks cvtpm installs therefore run its compiled twin,
cvtpm_hook.c, which takes the same arguments and gives the same messages
and exit codes (`cvtpm hook` and the `cvtpm-hook` command run this file's
code). Hooks installed with `install-hooks --python` run this file on its
own (`python3 -I -S`, no site-packages, half of Python's start-up), and it
imports nothing but `os` and `_socket`, the C core of the socket module
(the module itself, with its enums, costs as much again as Python's own
start-up). It writes its one HTTP/1.1 request by hand for the same reason,
and loads `json` only to explain an error.

Exit codes: 0 done (or nothing asked), 1 the daemon refused or cannot be
reached (the runtime then fails the container), 2 a usage error.
"""

import _socket
import os
import sys

# Equal to cvtpm._defaults and cvtpm.runtime.annotations (a test checks);
# this file imports no part of cvtpm, which is not on sys.path under -S.
RUN_DIR = "/run/cvtpm"
RUN_DIR_ENV = "CVTPM_RUN_DIR"
STATE_DIR_ENV = "CVTPM_STATE_DIR"
DAEMON_SOCKET = "daemon.sock"
ANNOTATION_ENABLE = "io.cvtpm.vtpm"

# The OCI stage names, and the dashed spellings `cvtpm hook` also takes.
STAGE_NAMES = {
    "create-runtime": "createRuntime",
    "createRuntime": "createRuntime",
    "poststop": "poststop",
}
USAGE = (
    "usage: cvtpm-hook [--run-dir DIR] [--state-dir DIR] [--json]"
    " create-runtime|poststop"
)
# The OCI state is a few kilobytes; anything far larger is not one.
MAX_STATE_SIZE = 1 << 20
MAX_ANSWER_SIZE = 16 << 20
# A bundle's config.json larger than this is left to the daemon to refuse.
MAX_CONFIG_SIZE = 16 << 20
# Making a vTPM on demand (an empty pool, an RSA EK) can take seconds.
TIMEOUT = 120.0
STATE_DIR_HEADER = "X-Cvtpm-State-Dir"


class HookError(Exception):
    """Why the hook failed, in one line for the runtime's error message."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def main(argv=None):
    """Run one hook stage on the OCI state from stdin; 0 ok, 1 failed, 2 usage."""
    try:
        options = _parse_args(sys.argv[1:] if argv is None else argv)
        if options is None:
            print(__doc__.strip())
            return 0
        as_json = options.pop("as_json")
        answer = run(_read_stdin(), **options)
    except HookError as exc:
        print(f"cvtpm-hook: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if as_json:
        print(answer.decode("utf-8", "replace"))
    return 0


def _read_stdin():
    # A runtime gives a pipe; a closed or write-only stdin is a clear error.
    try:
        return sys.stdin.buffer.read(MAX_STATE_SIZE + 1)
    except AttributeError:  # no stdin at all (fd 0 closed)
        reason = os.strerror(9)  # EBADF, as read(2) on a closed fd says
    except OSError as exc:
        reason = exc.strerror
    raise HookError(f"cannot read the OCI state on stdin: {reason}")


def run(state, stage, run_dir=None, state_dir=None):
    """Hand `state` (bytes) to the daemon for `stage`; its JSON answer, as bytes."""
    # 1. A container that did not ask for a vTPM needs no daemon.
    if len(state) > MAX_STATE_SIZE:
        raise HookError(f"the OCI state on stdin is larger than {MAX_STATE_SIZE} bytes")
    if not state.strip():
        raise HookError("no OCI state on stdin (a runtime passes the container's)")
    if not asks(state):
        return b'{"action": "skipped", "name": null}'

    # 2. The daemon runs the stage.
    run_dir = run_dir or os.environ.get(RUN_DIR_ENV) or RUN_DIR
    state_dir = state_dir or os.environ.get(STATE_DIR_ENV)
    path = os.path.join(run_dir, DAEMON_SOCKET)
    status, body = _post(path, f"/v1/hooks/{STAGE_NAMES[stage]}", state, state_dir)
    if status != 200:
        raise HookError(_detail(body) or f"the cvtpm daemon answered {status}")
    return body


def asks(state):
    """False only if the container's annotations surely do not ask for a vTPM.

    Without a JSON parser (see the module's docstring): runtimes write the
    annotations as plain JSON text, so a state that holds annotations but
    not io.cvtpm.vtpm, or holds it with a plain string value other than
    "enabled", did not ask. A state without annotations (runc leaves out an
    empty map; others write {} or null) sends the hook to the bundle's
    config.json, as the daemon goes there too. Anything else goes to the
    daemon, which parses it and decides.
    """
    if _holds_annotations(state):
        return _enabled(state)
    import json  # only for this rare case

    try:
        bundle = json.loads(state)["bundle"]
        # Runtimes give an absolute path; anything else the daemon refuses.
        config = _read_config(bundle) if os.path.isabs(bundle) else None
    except (ValueError, OSError, KeyError, TypeError, RecursionError):
        return True
    return True if config is None else _enabled(config)


def _read_config(bundle):
    """The bundle's config.json, or None if it is no regular file or too large.

    Opened non-blocking: a FIFO there must not hold the container's start.
    """
    fd = os.open(
        os.path.join(bundle, "config.json"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    )
    try:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:  # S_ISREG
            return None
        chunks, size = [], 0
        while size <= MAX_CONFIG_SIZE and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
        return None if size > MAX_CONFIG_SIZE else b"".join(chunks)
    finally:
        os.close(fd)


def _holds_annotations(state):
    """Whether the state has an "annotations" key, and none of it is {} or null."""
    parts = state.split(b'"annotations"')
    for rest in parts[1:]:
        rest = rest.lstrip()
        value = rest[1:].lstrip() if rest.startswith(b":") else b""
        empty_map = value[:1] == b"{" and value[1:].lstrip()[:1] == b"}"
        if value.startswith(b"null") or empty_map:
            return False
    return len(parts) > 1


def _enabled(document):
    """Whether `document`'s io.cvtpm.vtpm may be "enabled" (True when unsure).

    A key given twice counts as its last, as in a JSON parser. Unsure: a
    document with escapes where a spelling of the key could hide (anywhere,
    without a plain one; after the last plain one), and a value that is not
    ASCII (the daemon strips Unicode white space too).
    """
    key = b'"' + ANNOTATION_ENABLE.encode() + b'"'
    at = document.rfind(key)
    if at < 0:
        return b"\\u" in document
    if b"\\u" in document[at:]:
        return True
    rest = document[at + len(key) :].lstrip()
    if not rest.startswith(b":"):
        return True
    rest = rest[1:].lstrip()
    end = rest.find(b'"', 1)
    value = rest[1:end]
    if not rest.startswith(b'"') or end < 0 or b"\\" in value or not value.isascii():
        return True
    return value.strip().lower() == b"enabled"


def _parse_args(argv):
    """The options of `argv`; None for --help; HookError (exit 2) if wrong."""
    options = {"run_dir": None, "state_dir": None, "as_json": False}
    stage = None
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            return None
        if arg == "--json":
            options["as_json"] = True
        elif arg in ("--run-dir", "--state-dir"):
            value = next(args, None)
            if not value:
                raise HookError(f"{arg} needs a directory\n{USAGE}", 2)
            options[arg[2:].replace("-", "_")] = value
        elif arg in STAGE_NAMES and stage is None:
            stage = arg
        else:
            raise HookError(
                f"unexpected argument '{shown(os.fsencode(arg))}'\n{USAGE}", 2
            )
    if stage is None:
        raise HookError(f"which stage? (create-runtime or poststop)\n{USAGE}", 2)
    return {"stage": stage, **options}


def _post(socket_path, target, body, state_dir):
    """POST `body` to the daemon over its unix socket; (status, answer body)."""
    head = [
        f"POST {target} HTTP/1.1",
        "Host: cvtpm",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if state_dir:
        head.append(f"{STATE_DIR_HEADER}: {header_value(state_dir)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body

    # One request per connection; the answer ends when the daemon closes it.
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    connected = False
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(socket_path)
        connected = True
        sock.sendall(request)
        chunks, size = [], 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_SIZE:
                raise HookError(
                    f"the cvtpm daemon's answer is larger than {MAX_ANSWER_SIZE} bytes"
                )
    except TimeoutError:
        raise HookError(
            f"the cvtpm daemon did not answer within {TIMEOUT:.0f} s"
        ) from None
    except OSError as exc:
        reason, where = exc.strerror or exc, shown(os.fsencode(socket_path))
        if connected:
            raise HookError(
                f"the cvtpm daemon at {where} broke off the exchange: {reason}"
            ) from None
        raise HookError(
            f"cannot reach the cvtpm daemon at {where}: {reason};"
            " is `cvtpm daemon` running?"
        ) from None
    finally:
        sock.close()
    return parse_answer(b"".join(chunks))


def parse_answer(raw):
    """(status, body) of an HTTP/1.1 answer, the body cut at its Content-Length."""
    head, sep, content = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise HookError("the cvtpm daemon's answer is not HTTP")
    if not (parts[1].isdigit() and len(parts[1]) == 3):
        raise HookError(f"the cvtpm daemon's answer has no status: {shown(lines[0])}")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length" and value.isdigit():
            if len(content) < int(value):
                raise HookError(
                    f"the cvtpm daemon's answer is cut short ({len(content)} of"
                    f" {value.decode()} bytes)"
                )
            content = content[: int(value)]
        elif name == b"transfer-encoding":
            raise HookError("the cvtpm daemon's answer is chunked; expected a length")
    status = int(parts[1])
    if status == 200 and not content.lstrip().startswith(b"{"):
        raise HookError("the cvtpm daemon's answer is not JSON")
    return status, content


def _detail(body):
    """The "detail" sentence of the daemon's JSON error answer, or None."""
    import json  # only on this path: its import costs as much as the rest

    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return None
    detail = answer.get("detail") if isinstance(answer, dict) else None
    # FastAPI's validation errors give a list, no sentence for the runtime.
    if not isinstance(detail, str):
        return None
    return "".join(map(_one_line, detail))


def _one_line(c):
    """A character of a detail as the runtime's one-line message shows it."""
    if c < " " or "\x7f" <= c <= "\x9f":  # control characters as \xNN
        return f"\\x{ord(c):02x}"
    if c in "\u2028\u2029":  # line and paragraph separators
        return f"\\u{ord(c):04x}"
    if "\ud800" <= c <= "\udfff":  # a lone surrogate, which UTF-8 cannot hold
        return "\ufffd"
    return c


def shown(raw):
    """`raw` (bytes) with every byte outside printable ASCII as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in raw)


def header_value(text):
    """`text` with every byte outside printable ASCII as %XX (undone by the daemon)."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}"
        for b in os.fsencode(text)
    )


if __name__ == "__main__":
    sys.exit(main())
