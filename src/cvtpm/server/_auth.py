"""Bearer-token authentication for cvtpm's HTTP services."""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from cvtpm.errors import ConfigError
from cvtpm.files import read_regular_file

TOKEN_ENV = "CVTPM_VERIFIER_TOKEN"
MIN_TOKEN_LENGTH = 16
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

_BEARER = HTTPBearer(auto_error=False, description="The service's bearer token.")
# Module-level, so FastAPI can resolve it from the postponed annotation.
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def load_token(path: str | Path | None = None, env: str = TOKEN_ENV) -> str:
    """The service token from a file (first line) or else the environment."""
    if path is not None:
        data = read_regular_file(path, "the token file", limit=4096)
        try:
            token = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"the token file {path} is not text") from None
    else:
        token = os.environ.get(env, "").strip()
    if len(token) < MIN_TOKEN_LENGTH:
        if path is not None:
            said = f"the token file {path} holds {_characters(token)}"
        elif token:
            said = f"{env} is {_characters(token)}"
        else:
            said = f"pass --token-file or set {env}"
        raise ConfigError(
            f"a bearer token of at least {MIN_TOKEN_LENGTH} characters is needed:"
            f" {said}"
        )
    # RFC 6750's b64token characters: a client can send nothing else in the
    # header as it is (HTTP reads header bytes as Latin-1, not UTF-8).
    if not _B64TOKEN.fullmatch(token):
        raise ConfigError(
            "the bearer token may hold only letters, digits and - . _ ~ + / "
            "(then = padding), as RFC 6750 allows"
        )
    return token


_REFUSAL = "a valid bearer token is required"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_auth(token: str):
    """A FastAPI dependency that admits only requests bearing `token`.

    It also puts the bearer scheme in the OpenAPI document; BearerGate makes
    the same check before a request's body is read.
    """
    expected = token.encode()

    def check(
        credentials: Credentials,
    ) -> None:
        given = credentials.credentials if credentials else ""
        if not _token_matches(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, _REFUSAL, headers=_CHALLENGE
            )

    return check


class BearerGate:
    """ASGI middleware: a request under `prefix` without the token gets 401 at once.

    FastAPI reads and parses a request's body before it runs the route's
    dependencies, so without this anyone could make the service read and
    parse bodies up to its size limit, however many at once.
    """

    def __init__(self, app: ASGIApp, token: str, prefix: str):
        self.app = app
        self.expected = token.encode()
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The path as routes see it: without the prefix a proxy mounts it at.
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] == "http" and path.startswith(self.prefix):
            scheme, _, given = (
                Headers(scope=scope).get("authorization", "").partition(" ")
            )
            if scheme.lower() != "bearer" or not _token_matches(
                given.strip(), self.expected
            ):
                refusal = JSONResponse(
                    {"detail": _REFUSAL}, status.HTTP_401_UNAUTHORIZED, _CHALLENGE
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _token_matches(given: str, expected: bytes) -> bool:
    # Constant-time comparison: the time taken says nothing about the token.
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected)


def _characters(token: str) -> str:
    return f"{len(token)} character" + ("" if len(token) == 1 else "s")
