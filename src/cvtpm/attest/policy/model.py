"""The runtime policy: what a container's measurement list may contain."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from cvtpm.errors import ParseError
from cvtpm.ima.hashes import DIGEST_SIZES, guess_algorithm
from cvtpm.ima.signature import Keyring


class Digest(NamedTuple):
    """A digest and the name of its algorithm (kernel names: "sha256", ...)."""

    alg: str
    value: bytes

    def __str__(self) -> str:
        return f"{self.alg}:{self.value.hex()}"

    @classmethod
    def parse(cls, text: str, *, where: str = "digest") -> Digest:
        """Read "<alg>:<hex>" or bare hex (algorithm guessed from its length)."""
        alg, colon, hex_part = text.partition(":")
        if not colon:
            alg, hex_part = "", text
        try:
            value = bytes.fromhex(hex_part)
        except ValueError:
            raise ParseError(f"{where}: {text[:80]!r} is not hex") from None
        if not alg:
            alg = guess_algorithm(len(value)) or ""
        if DIGEST_SIZES.get(alg) != len(value):
            raise ParseError(f"{where}: {text[:80]!r} is not a known digest")
        return cls(alg, value)


DigestMap = Mapping[str, frozenset[Digest]]


@dataclass(frozen=True)
class RuntimePolicy:
    """Allowed file digests per path, exclusions, keyrings, buffers and keys.

    `excludes` are regular expressions matched at the start of a path (Python's
    re.match, as Keylime does). `keyrings` holds the allowed digests of keys
    that ima-buf entries load into a keyring, `buffers` those of other ima-buf
    events. `verification_keys` are PEM public keys whose valid IMA signatures
    vouch for a file whatever its digest. `log_hash_alg` is the algorithm of the
    list's template hashes.
    """

    digests: DigestMap = field(default_factory=dict)
    excludes: tuple[str, ...] = ()
    keyrings: DigestMap = field(default_factory=dict)
    buffers: DigestMap = field(default_factory=dict)
    ignored_keyrings: tuple[str, ...] = ()
    verification_keys: tuple[str, ...] = ()
    log_hash_alg: str = "sha1"

    def __post_init__(self) -> None:
        # Fail on a bad regex when the policy is made, not on the first entry.
        compile_excludes(self.excludes)

    def allow(self, path: str, *digests: Digest) -> RuntimePolicy:
        """A copy of this policy that also allows `digests` for `path`."""
        merged = dict(self.digests)
        merged[path] = merged.get(path, frozenset()) | frozenset(digests)
        return replace(self, digests=merged)

    @property
    def digest_count(self) -> int:
        """How many (path, digest) pairs the policy allows."""
        return sum(len(values) for values in self.digests.values())


def compile_excludes(excludes: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern matching any exclude at the start of a path, or None if none."""
    excludes = list(excludes)
    if not excludes:
        return None
    for number, pattern in enumerate(excludes):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ParseError(f"exclude {number} {pattern!r}: {exc}") from None
    return re.compile("|".join(f"(?:{pattern})" for pattern in excludes))


def digest_map(raw: Mapping[str, Iterable[str]], where: str) -> dict:
    """Parse {name: [digest text, ...]} into {name: frozenset[Digest]}."""
    if not isinstance(raw, Mapping):
        raise ParseError(f"{where}: expected an object of name -> list of digests")
    parsed = {}
    for name, values in raw.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ParseError(f"{where}[{name!r}]: expected a list of strings")
        parsed[name] = frozenset(
            Digest.parse(v, where=f"{where}[{name!r}]") for v in values
        )
    return parsed


def pem_keys(texts: Iterable[str], where: str) -> tuple[str, ...]:
    """PEM texts of IMA verification keys, each checked to hold a key that loads.

    A key that does not load would not vouch for any signature, and the files
    it was meant for would fail far from the cause; the policy is refused here.
    """
    checked = []
    for number, text in enumerate(texts):
        try:
            loaded = len(Keyring.from_pem(text))
        except ValueError as exc:
            message = f"{where}[{number}]: not a PEM public key or certificate: {exc}"
            raise ParseError(message) from None
        if not loaded:
            raise ParseError(
                f"{where}[{number}]: holds no PEM public key or certificate"
            )
        checked.append(text)
    return tuple(checked)


def json_object(data: str | bytes | dict, what: str) -> dict[str, Any]:
    """Parse JSON text into an object (dicts pass through); ParseError otherwise."""
    if isinstance(data, dict):
        return data
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ParseError(f"{what}: expected a JSON object")
    return doc
