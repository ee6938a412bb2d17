"""Evidence fetched over HTTP: every way a daemon can fail is one clear sentence."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cvtpm.attest.fetch import (
    TOKEN_ENV,
    EvidenceUnavailable,
    check_daemon_url,
    daemon_fetcher,
    fetch_evidence,
    fetch_from_daemon,
)
from cvtpm.attest.verifier import Registration
from cvtpm.errors import ParseError
from tests.attest.test_evidence import sample

NONCE = b"\x01" * 20


class _Handler(BaseHTTPRequestHandler):
    """Answers by container name: each name is one way of being a bad daemon."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.split("/")[3]
        if name == "good":
            evidence = sample().to_json()
            evidence["token"] = self.headers.get("Authorization", "")
            self._send(200, "application/json", json.dumps(evidence))
        elif name == "missing":
            self._send(404, "application/json", '{"detail": "no such container"}')
        elif name == "locked":
            self._send(401, "application/json", '{"detail": "bad token"}')
        elif name == "broken":
            self._send(500, "text/plain", "Traceback (most recent call last):\n  ...")
        elif name == "html":
            self._send(200, "text/html", "<html>a web server</html>")
        elif name == "partial":
            evidence = sample().to_json()
            del evidence["nonce"]
            self._send(200, "application/json", json.dumps(evidence))

    def _send(self, code: int, kind: str, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def daemon() -> Iterator[str]:
    """A small HTTP server playing good and bad daemons; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def raw_server(reply: bytes | None) -> Iterator[str]:
    """A TCP server that sends `reply` to whoever connects (None: says nothing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve():
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            held.append(conn)
            if reply is not None:
                conn.recv(4096)
                conn.sendall(reply)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_good_evidence_comes_through_with_the_token(daemon, monkeypatch):
    """A daemon's evidence is parsed, and the bearer token is sent when set."""
    monkeypatch.setenv(TOKEN_ENV, "daemon-token")
    evidence = fetch_evidence(daemon, "good", NONCE, 0)
    assert evidence == sample()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"has no container 'missing' \(404: no such container\)"),
        ("locked", rf"refused the request \(401: bad token\); set {TOKEN_ENV}"),
        ("broken", r"answered 500 Internal Server Error: Traceback"),
        ("html", r"answered with text/html, not JSON evidence"),
        ("partial", r"sent unusable evidence: evidence: field 'nonce' is missing"),
    ],
)
def test_each_bad_answer_is_named(daemon, name, message):
    """404, 401, 500, a web page and incomplete evidence each say what happened."""
    with pytest.raises(EvidenceUnavailable, match=message) as caught:
        fetch_evidence(daemon, name, NONCE, 0)
    assert "\n" not in str(caught.value)


def test_nothing_listening_is_cannot_reach():
    """A port nobody listens on is 'cannot reach', with the daemon's address."""
    with socket.socket() as bound:  # bound, never listening: connections refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        with pytest.raises(
            EvidenceUnavailable, match=f"cannot reach the daemon at {url}"
        ):
            fetch_evidence(url, "good", NONCE, 0)


def test_something_that_is_not_http_is_named():
    """A server that answers with something other than HTTP is not a daemon."""
    with (
        raw_server(b"SSH-2.0-OpenSSH_9.2\r\n") as url,
        pytest.raises(EvidenceUnavailable, match="does not answer like a cvtpm daemon"),
    ):
        fetch_evidence(url, "good", NONCE, 0)


def test_a_silent_server_times_out():
    """A server that accepts and never answers is a timeout, in seconds."""
    with (
        raw_server(None) as url,
        pytest.raises(EvidenceUnavailable, match=r"did not answer within 0.3 s"),
    ):
        fetch_evidence(url, "good", NONCE, 0, timeout=0.3)


def test_registered_url_or_given_url(daemon):
    """fetch_from_daemon needs a registered URL; daemon_fetcher uses its own."""
    reg = Registration("good", "", b"")
    with pytest.raises(EvidenceUnavailable, match="no daemon URL is registered"):
        fetch_from_daemon(reg, NONCE, 0)
    assert daemon_fetcher(daemon)(reg, NONCE, 0).container == "web"


@pytest.mark.parametrize(
    "url", ["", "localhost:8441", "ftp://host/", "http://", "/run/cvtpm/daemon.sock"]
)
def test_daemon_urls_must_be_http(url):
    """Anything but an http(s) URL with a host is refused with an example."""
    with pytest.raises(ParseError, match=r"expected http://HOST:PORT"):
        check_daemon_url(url)
    assert check_daemon_url("http://127.0.0.1:8441/") == "http://127.0.0.1:8441"
