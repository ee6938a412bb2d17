"""`cvtpm-hook`: the OCI hook runc and podman run when a container starts and stops.

    cvtpm-hook [--run-dir DIR] [--state-dir DIR] [--json] create-runtime|poststop

It hands the container's state (stdin) to the cvtpm daemon on its unix
socket, where the stage runs (cvtpm.server.hooks), and reports the answer.
A runtime starts it twice for every container, so its start-up time is every
container's: it imports only modules Python has loaded anyway, plus json and
socket, and speaks HTTP/1.1 to the daemon itself, in the few lines below,
because importing http.client (which pulls in email and ssl) costs more than
all the rest of the hook. A container that asked for no vTPM is let through
without asking the daemon.

Exit codes: 0 done (or nothing asked), 1 the daemon refused or cannot be
reached (the runtime then fails the container), 2 a usage error.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from cvtpm import _defaults
from cvtpm.runtime.annotations import asks_for_vtpm

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
# Making a vTPM on demand (an empty pool, an RSA EK) can take seconds.
TIMEOUT = 120.0
STATE_DIR_HEADER = "X-Cvtpm-State-Dir"


class HookError(Exception):
    """Why the hook failed, in one line for the runtime's error message."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: list[str] | None = None) -> int:
    """Run one hook stage on the OCI state from stdin; 0 ok, 1 failed, 2 usage."""
    try:
        options = _parse_args(sys.argv[1:] if argv is None else argv)
        if options is None:
            print(__doc__.strip())
            return 0
        state = sys.stdin.buffer.read(MAX_STATE_SIZE + 1)
        outcome = run(state, **options)
    except HookError as exc:
        print(f"cvtpm-hook: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if options["as_json"]:
        print(json.dumps(outcome, indent=2, sort_keys=True))
    return 0


def run(
    state: bytes,
    stage: str,
    run_dir: str | None = None,
    state_dir: str | None = None,
    as_json: bool = False,
) -> dict:
    """Hand `state` to the daemon for `stage`; the outcome it reports."""
    # 1. A container that did not ask for a vTPM needs no daemon.
    if len(state) > MAX_STATE_SIZE:
        raise HookError(f"the OCI state on stdin is larger than {MAX_STATE_SIZE} bytes")
    if not _asks(state):
        return {"action": "skipped", "name": None}

    # 2. The daemon runs the stage.
    run_dir = run_dir or os.environ.get(_defaults.RUN_DIR_ENV) or _defaults.RUN_DIR
    state_dir = state_dir or os.environ.get(_defaults.STATE_DIR_ENV)
    path = os.path.join(run_dir, _defaults.DAEMON_SOCKET)
    status, answer = _post(path, f"/v1/hooks/{STAGE_NAMES[stage]}", state, state_dir)
    if status != 200:
        detail = answer.get("detail") if isinstance(answer, dict) else None
        raise HookError(detail or f"the cvtpm daemon answered {status}")
    return answer


def _parse_args(argv: list[str]) -> dict | None:
    """The options of `argv`; None for --help; HookError (exit 2) if wrong."""
    options: dict = {"run_dir": None, "state_dir": None, "as_json": False}
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
            raise HookError(f"unexpected argument {arg!r}\n{USAGE}", 2)
    if stage is None:
        raise HookError(f"which stage? (create-runtime or poststop)\n{USAGE}", 2)
    return {"stage": stage, **options}


def _asks(state: bytes) -> bool:
    """True if the container's annotations (state, else config.json) ask cvtpm.

    Anything unreadable counts as asking: the daemon then says what is wrong.
    """
    try:
        data = json.loads(state)
        annotations = data.get("annotations")
        if not annotations:
            with open(os.path.join(data["bundle"], "config.json"), "rb") as config:
                annotations = json.load(config).get("annotations") or {}
        return asks_for_vtpm(annotations)
    except (ValueError, OSError, KeyError, TypeError, AttributeError):
        return True


def _post(
    socket_path: str, target: str, body: bytes, state_dir: str | None
) -> tuple[int, object]:
    """POST `body` to the daemon over its unix socket; (status, JSON answer)."""
    head = [
        f"POST {target} HTTP/1.1",
        "Host: cvtpm",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if state_dir:
        head.append(f"{STATE_DIR_HEADER}: {_header_value(state_dir)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body

    # One request per connection; the answer ends when the daemon closes it.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(socket_path)
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except TimeoutError:
        raise HookError(
            f"the cvtpm daemon did not answer within {TIMEOUT:.0f} s"
        ) from None
    except OSError as exc:
        raise HookError(
            f"cannot reach the cvtpm daemon at {socket_path}: {exc.strerror or exc};"
            " is `cvtpm daemon` running?"
        ) from None
    return _parse_answer(b"".join(chunks))


def _parse_answer(raw: bytes) -> tuple[int, object]:
    """(status, JSON body) of an HTTP/1.1 answer with a Content-Length."""
    head, sep, content = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise HookError("the cvtpm daemon's answer is not HTTP")
    if not parts[1].isdigit():
        raise HookError(f"the cvtpm daemon's answer has no status: {lines[0]!r}")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            content = content[: int(value.strip())]
        elif name.strip().lower() == b"transfer-encoding":
            raise HookError("the cvtpm daemon's answer is chunked; expected a length")
    try:
        answer = json.loads(content) if content else None
    except ValueError:
        raise HookError("the cvtpm daemon's answer is not JSON") from None
    return int(parts[1]), answer


def _header_value(text: str) -> str:
    """`text` with every byte outside printable ASCII as %XX (undone by the daemon)."""
    data = os.fsencode(text)
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in data
    )


if __name__ == "__main__":
    sys.exit(main())
