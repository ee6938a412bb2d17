"""The daemon's evidence endpoint as plain code: `GET /v1/containers/{name}/evidence`.

The daemon routes `?nonce=HEX&since=N` here; errors are cvtpm errors the
daemon maps to statuses (ParseError 400, NotFoundError 404, StateError 409).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvtpm.attest.evidence import check_nonce, collect_evidence
from cvtpm.errors import ParseError, StateError

BINARY_LIST = "binary_runtime_measurements"


def parse_request(nonce_hex: str, since: str | int) -> tuple[bytes, int]:
    """The nonce and start index of an evidence request; ParseError when malformed."""
    try:
        nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        raise ParseError("nonce must be hex") from None
    try:
        start = int(since)
    except (TypeError, ValueError):
        raise ParseError("since must be an integer") from None
    if start < 0:
        raise ParseError("since must not be negative")
    return check_nonce(nonce), start


def serve_evidence(
    manager: Any,
    name: str,
    nonce_hex: str,
    since: str | int,
    list_path: Callable[[str], Path],
) -> dict[str, Any]:
    """Evidence JSON for container `name`: a quote over the nonce and its list slice.

    `manager` is a cvtpm.vtpm VtpmManager (get, is_running, client);
    `list_path(name)` says where the container's binary list is, e.g.
    `paths.lists / name / "binary_runtime_measurements"`.
    """
    nonce, start = parse_request(nonce_hex, since)
    info = manager.get(name)
    if hasattr(manager, "is_running") and not manager.is_running(name):
        raise StateError(f"the vTPM of {name!r} is not running")
    with manager.client(name) as tpm:
        evidence = collect_evidence(tpm, info, nonce, list_path(name), start)
    return evidence.to_json()
