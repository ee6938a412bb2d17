"""Bearer-token authentication for cvtpm's HTTP services."""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cvtpm.errors import ConfigError
from cvtpm.files import read_regular_file

TOKEN_ENV = "CVTPM_VERIFIER_TOKEN"
MIN_TOKEN_LENGTH = 16

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
        raise ConfigError(
            f"a bearer token of at least {MIN_TOKEN_LENGTH} characters is needed:"
            f" pass --token-file or set {env}"
        )
    return token


def bearer_auth(token: str):
    """A FastAPI dependency that admits only requests bearing `token`."""
    expected = token.encode()

    def check(
        credentials: Credentials,
    ) -> None:
        given = credentials.credentials.encode() if credentials else b""
        # Constant-time comparison: the time taken says nothing about the token.
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
