"""Keylime's JSON runtime policy (meta.version 1), read into a RuntimePolicy.

The format is keylime/ima/types.py RuntimePolicyType: `digests` (path -> hex
digests, optionally "<alg>:"-prefixed), `excludes` (regexes), `keyrings`
(keyring -> digests of the keys loaded into it), `ima` (ignored_keyrings,
log_hash_alg, dm_policy), `ima-buf` (event name -> digests) and
`verification-keys` (a JSON string holding base64 DER public keys).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import serialization

from cvtpm.attest.policy.model import (
    RuntimePolicy,
    digest_map,
    json_object,
    pem_keys,
)
from cvtpm.errors import ParseError
from cvtpm.ima.hashes import DIGEST_SIZES

SUPPORTED_VERSION = 1  # keylime/ima/ima.py RUNTIME_POLICY_CURRENT_VERSION


def load_keylime(data: str | bytes | dict) -> RuntimePolicy:
    """Read a Keylime runtime policy; ParseError says which part is wrong."""
    # 1. JSON object with a supported version.
    doc = json_object(data, "Keylime runtime policy")
    meta = doc.get("meta")
    version = meta.get("version") if isinstance(meta, dict) else None
    if version != SUPPORTED_VERSION:
        raise ParseError(f"Keylime runtime policy: meta.version {version!r}, need 1")

    # 2. Digests, keyrings and buffers.
    digests = digest_map(doc.get("digests", {}), "digests")
    keyrings = digest_map(doc.get("keyrings", {}), "keyrings")
    buffers = digest_map(doc.get("ima-buf", {}), "ima-buf")

    # 3. Exclusions and the `ima` section.
    excludes = doc.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise ParseError("excludes: expected a list of regular expressions")
    ima = doc.get("ima", {})
    if not isinstance(ima, dict):
        raise ParseError("ima: expected an object")
    ignored = ima.get("ignored_keyrings", [])
    if not isinstance(ignored, list) or not all(isinstance(k, str) for k in ignored):
        raise ParseError("ima.ignored_keyrings: expected a list of keyring names")
    log_hash_alg = ima.get("log_hash_alg", "sha1")
    if log_hash_alg not in DIGEST_SIZES:
        raise ParseError(f"ima.log_hash_alg: unknown algorithm {log_hash_alg!r}")
    # TODO: ima.dm_policy (device-mapper ima-buf events) is not evaluated; such
    # events then need `ima-buf` digests, so they fail rather than pass silently.

    # 4. Verification keys.
    keys = _verification_keys(doc.get("verification-keys", ""))

    return RuntimePolicy(
        digests=digests,
        excludes=tuple(excludes),
        keyrings=keyrings,
        buffers=buffers,
        ignored_keyrings=tuple(ignored),
        verification_keys=keys,
        log_hash_alg=log_hash_alg,
    )


def _verification_keys(raw: Any) -> tuple[str, ...]:
    # Keylime stores an ImaKeyring as a JSON string {"pubkeys": [base64 DER],
    # "keyids": [...]} (keylime/ima/file_signatures.py), sometimes JSON-encoded
    # twice; we also accept PEM text.
    if not raw:
        return ()
    if not isinstance(raw, str):
        raise ParseError("verification-keys: expected a string")
    if "-----BEGIN" in raw:
        return pem_keys([raw], "verification-keys")
    try:
        obj = json.loads(raw)
        if isinstance(obj, str):
            obj = json.loads(obj)
    except ValueError:
        raise ParseError("verification-keys: neither PEM nor Keylime JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("pubkeys"), list):
        raise ParseError("verification-keys: expected {'pubkeys': [...]}")

    pems = []
    for number, encoded in enumerate(obj["pubkeys"]):
        try:
            key = serialization.load_der_public_key(base64.b64decode(encoded))
        except (ValueError, TypeError) as exc:
            raise ParseError(f"verification-keys: key {number}: {exc}") from None
        pems.append(_pem(key))
    return tuple(pems)


def _pem(key: Any) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
