"""Evidence over HTTP from a cvtpm daemon, with errors a user can act on.

The daemon serves `GET /v1/containers/{name}/evidence?nonce=HEX&since=N` on
its control socket and on its `--listen` port (cvtpm.server.daemon). Whatever
goes wrong on the way (nothing listening, something that is not a cvtpm
daemon, an error status, evidence that does not parse) is an
EvidenceUnavailable of one line that says which.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from cvtpm.attest.evidence import Evidence
from cvtpm.errors import CvtpmError, ParseError

FETCH_TIMEOUT = 30.0
TOKEN_ENV = "CVTPM_DAEMON_TOKEN"
_DETAIL_LIMIT = 200

# Fetches evidence for (registration, nonce, since); raises CvtpmError.
Fetcher = Callable[[Any, bytes, int], Evidence]


class EvidenceUnavailable(CvtpmError):
    """No evidence came from the daemon: unreachable, not a daemon, or an error."""


def check_daemon_url(url: str) -> str:
    """`url` without a trailing slash if it is an http(s) URL, else ParseError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParseError(
            f"{url!r} is not a daemon URL: expected http://HOST:PORT,"
            " e.g. http://127.0.0.1:8441"
        )
    return url.rstrip("/")


def fetch_evidence(
    base_url: str, name: str, nonce: bytes, since: int, timeout: float = FETCH_TIMEOUT
) -> Evidence:
    """GET the evidence of container `name` from the daemon at `base_url`."""
    base = base_url.rstrip("/")
    url = f"{base}/v1/containers/{quote(name, safe='')}/evidence"
    headers = {}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"

    # 1. An HTTP answer at all.
    try:
        response = httpx.get(
            url,
            params={"nonce": nonce.hex(), "since": since},
            headers=headers,
            timeout=timeout,
        )
    except httpx.TimeoutException:
        raise EvidenceUnavailable(
            f"the daemon at {base} did not answer within {timeout:g} s"
        ) from None
    except httpx.ConnectError as exc:
        raise EvidenceUnavailable(
            f"cannot reach the daemon at {base}: {_reason(exc)}"
        ) from None
    except (httpx.RemoteProtocolError, httpx.DecodingError) as exc:
        raise EvidenceUnavailable(
            f"{base} does not answer like a cvtpm daemon (not HTTP: {_reason(exc)})"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise EvidenceUnavailable(
            f"cannot fetch evidence from {base}: {_reason(exc)}"
        ) from None

    # 2. A success status.
    code = response.status_code
    if code == 404:
        raise EvidenceUnavailable(
            f"the daemon at {base} has no container {name!r} (404: {_detail(response)})"
        )
    if code in (401, 403):
        raise EvidenceUnavailable(
            f"the daemon at {base} refused the request ({code}: {_detail(response)});"
            f" set {TOKEN_ENV} if it needs a token"
        )
    if code >= 400:
        raise EvidenceUnavailable(
            f"the daemon at {base} answered {code} {response.reason_phrase}:"
            f" {_detail(response)}"
        )

    # 3. Evidence in the body.
    try:
        data = response.json()
    except ValueError:
        kind = response.headers.get("content-type") or "no content type"
        raise EvidenceUnavailable(
            f"{base} answered with {kind}, not JSON evidence:"
            " is it a cvtpm daemon's --listen address?"
        ) from None
    try:
        return Evidence.from_json(data)
    except ParseError as exc:
        raise EvidenceUnavailable(
            f"the daemon at {base} sent unusable evidence: {exc}"
        ) from None


def fetch_from_daemon(reg: Any, nonce: bytes, since: int) -> Evidence:
    """Evidence from the daemon URL registered with `reg` (a Registration)."""
    if not reg.daemon_url:
        raise EvidenceUnavailable(f"no daemon URL is registered for {reg.name!r}")
    return fetch_evidence(reg.daemon_url, reg.name, nonce, since)


def daemon_fetcher(url: str) -> Fetcher:
    """A Fetcher that asks the daemon at `url`, whatever URL is registered."""
    base = check_daemon_url(url)

    def fetch(reg: Any, nonce: bytes, since: int) -> Evidence:
        return fetch_evidence(base, reg.name, nonce, since)

    return fetch


def _reason(exc: Exception) -> str:
    """An exception's message on one line, without "[Errno N]"."""
    text = str(exc) or type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.strip())
    return _one_line(text)


def _detail(response: httpx.Response) -> str:
    """What an error answer says: its JSON "detail", else the start of its text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return _one_line(body["detail"])
    return _one_line(response.text) or response.reason_phrase or "no detail"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    return text
