"""cvtpm's own runtime policy format: small, explicit JSON that round-trips.

    {
      "cvtpm_runtime_policy": 1,
      "log_hash_alg": "sha1",
      "files": {"/usr/bin/busybox": ["sha256:<hex>", ...]},
      "excludes": ["/tmp/"],
      "keyrings": {".ima": ["sha256:<hex>"]},
      "ignored_keyrings": [],
      "buffers": {"<ima-buf event name>": ["sha256:<hex>"]},
      "keys": ["-----BEGIN PUBLIC KEY-----\\n..."]
    }

Every digest carries its algorithm. `files` maps a path as the container sees it
to the digests it may have; `excludes` are regexes matched at the start of a
path; `keyrings` and `buffers` allow ima-buf events by the digest of their
buffer; `keys` are PEM public keys whose IMA signatures vouch for any file.
Only `cvtpm_runtime_policy` is required; `dump` writes every key, sorted.
"""

from __future__ import annotations

import json

from cvtpm.attest.policy.model import (
    DigestMap,
    RuntimePolicy,
    digest_map,
    json_object,
    pem_keys,
)
from cvtpm.errors import ParseError
from cvtpm.ima.hashes import DIGEST_SIZES

FORMAT_VERSION = 1
_KEYS = {
    "cvtpm_runtime_policy",
    "log_hash_alg",
    "files",
    "excludes",
    "keyrings",
    "ignored_keyrings",
    "buffers",
    "keys",
}


def dump(policy: RuntimePolicy) -> str:
    """The policy as cvtpm JSON (sorted, so equal policies give equal text)."""
    doc = {
        "cvtpm_runtime_policy": FORMAT_VERSION,
        "log_hash_alg": policy.log_hash_alg,
        "files": _digest_lists(policy.digests),
        "excludes": list(policy.excludes),
        "keyrings": _digest_lists(policy.keyrings),
        "ignored_keyrings": list(policy.ignored_keyrings),
        "buffers": _digest_lists(policy.buffers),
        "keys": list(policy.verification_keys),
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def load(data: str | bytes | dict) -> RuntimePolicy:
    """Read cvtpm JSON; ParseError names the part that is wrong."""
    doc = json_object(data, "cvtpm runtime policy")
    version = doc.get("cvtpm_runtime_policy")
    if version != FORMAT_VERSION:
        raise ParseError(f"cvtpm runtime policy: version {version!r}, need 1")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ParseError(f"cvtpm runtime policy: unknown keys {unknown}")

    log_hash_alg = doc.get("log_hash_alg", "sha1")
    if log_hash_alg not in DIGEST_SIZES:
        raise ParseError(f"log_hash_alg: unknown algorithm {log_hash_alg!r}")

    return RuntimePolicy(
        digests=digest_map(doc.get("files", {}), "files"),
        excludes=_strings(doc, "excludes"),
        keyrings=digest_map(doc.get("keyrings", {}), "keyrings"),
        buffers=digest_map(doc.get("buffers", {}), "buffers"),
        ignored_keyrings=_strings(doc, "ignored_keyrings"),
        verification_keys=pem_keys(_strings(doc, "keys"), "keys"),
        log_hash_alg=log_hash_alg,
    )


def _digest_lists(digests: DigestMap) -> dict[str, list[str]]:
    return {name: sorted(str(d) for d in values) for name, values in digests.items()}


def _strings(doc: dict, key: str) -> tuple[str, ...]:
    values = doc.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ParseError(f"{key}: expected a list of strings")
    return tuple(values)
