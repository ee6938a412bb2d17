"""Check measurement list entries against a runtime policy; verdicts are data.

Reasons (Failure.reason):
- `policy.path_not_allowed`: the file's path is not in the policy;
- `policy.digest_mismatch`: the path is allowed, but not with this digest;
- `policy.violation`: the kernel logged a ToMToU/open-writers violation;
- `signature.malformed`, `signature.invalid`, `signature.unknown_key`: an ima-sig
  signature is broken, does not verify, or names a key the policy lacks;
- `keyring.digest_mismatch`: a key loaded into a keyring of the policy is not
  one of the allowed keys; `keyring.not_allowed`: an ima-buf event whose name
  the policy does not know; `buffer.digest_mismatch`: an allowed ima-buf event
  with a buffer of another digest.

The rules follow Keylime's (keylime/ima/ima.py): excluded paths pass; a file
with a valid signature by a policy key passes whatever its digest; otherwise
the digest must be allowed for the path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cvtpm.attest.policy.model import RuntimePolicy, compile_excludes
from cvtpm.ima.entry import BANK_SIZES, MEASUREMENT_GAP, Entry
from cvtpm.ima.signature import Keyring, SignatureCheck, verify_signature

# A violation's template digest is all zeros, in every bank's list.
_ZERO_DIGESTS = frozenset(bytes(size) for size in BANK_SIZES.values())
_SIGNATURE_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one entry is not allowed: a dotted reason, where, and a message."""

    reason: str
    index: int
    path: str
    digest: str  # "<alg>:<hex>" of the file digest as logged
    message: str


class PolicyEvaluator:
    """A runtime policy prepared for fast checks: sets of bytes, one regex, a keyring.

    Create it once per policy and call `evaluate` for every entry; entries that
    match an allowed digest cost two lookups.
    """

    def __init__(self, policy: RuntimePolicy, keyring: Keyring | None = None):
        self.policy = policy
        self._files = _value_sets(policy.digests)
        self._keyrings = _value_sets(policy.keyrings)
        self._buffers = _value_sets(policy.buffers)
        self._exclude = compile_excludes(policy.excludes)
        self._ignored = frozenset(policy.ignored_keyrings)
        self._ignore_all_keyrings = "*" in self._ignored

        keys = Keyring.from_pem("".join(policy.verification_keys))
        for key in keyring or ():
            keys.add(key)
        self._keyring = keys if len(keys) else None
        self._signature_checks: dict[tuple[bytes, bytes, str], SignatureCheck] = {}

    def evaluate(self, entry: Entry, index: int) -> list[Failure]:
        """The failures of one entry (empty if the policy allows it)."""
        if entry.template_name == "ima-buf":
            return self._buffer(entry, index)
        if entry.template_digest in _ZERO_DIGESTS:
            return self._violation(entry, index)
        if entry.signature and self._keyring is not None:
            return self._signed(entry, index)

        allowed = self._files.get(entry.path)
        if allowed is not None and entry.file_digest in allowed:
            return []
        return self._file_failure(entry, index, allowed)

    def evaluate_all(self, entries: Iterable[Entry], start: int = 0) -> list[Failure]:
        """The failures of a run of entries whose first has index `start`."""
        failures: list[Failure] = []
        evaluate = self.evaluate
        for index, entry in enumerate(entries, start):
            found = evaluate(entry, index)
            if found:
                failures.extend(found)
        return failures

    def _excluded(self, path: str) -> bool:
        return self._exclude is not None and self._exclude.match(path) is not None

    def _file_failure(
        self, entry: Entry, index: int, allowed: frozenset[bytes] | None
    ) -> list[Failure]:
        if self._excluded(entry.path):
            return []
        if allowed is None:
            return [_failure("policy.path_not_allowed", entry, index, "not in policy")]
        return [
            _failure(
                "policy.digest_mismatch",
                entry,
                index,
                f"digest {entry.digest_alg}:{entry.file_digest.hex()} not allowed",
            )
        ]

    def _violation(self, entry: Entry, index: int) -> list[Failure]:
        if self._excluded(entry.path):
            return []
        if entry.path == MEASUREMENT_GAP:
            message = "the container ran while no cvtpm daemon measured it"
            return [_failure("policy.measurement_gap", entry, index, message)]
        return [
            _failure(
                "policy.violation",
                entry,
                index,
                "measurement violation (file open for write while measured)",
            )
        ]

    def _signed(self, entry: Entry, index: int) -> list[Failure]:
        # 1. Excluded paths are not looked at, signature or not.
        if self._excluded(entry.path):
            return []

        # 2. A valid signature vouches for the file; a malformed one fails it
        #    even when the digest is allowed.
        check = self._check_signature(entry)
        if check.ok:
            return []
        if check.reason == "signature.malformed":
            return [_failure(check.reason, entry, index, check.message)]

        # 3. Otherwise the digest may still be allowed (Keylime's fallback).
        allowed = self._files.get(entry.path)
        if allowed is not None and entry.file_digest in allowed:
            return []
        return [
            _failure(check.reason or "signature.invalid", entry, index, check.message)
        ]

    def _check_signature(self, entry: Entry) -> SignatureCheck:
        key = (entry.signature, entry.file_digest, entry.digest_alg)
        check = self._signature_checks.get(key)
        if check is None:
            assert self._keyring is not None
            check = verify_signature(*key, self._keyring)
            if len(self._signature_checks) >= _SIGNATURE_CACHE_LIMIT:
                self._signature_checks.clear()
            self._signature_checks[key] = check
        return check

    def _buffer(self, entry: Entry, index: int) -> list[Failure]:
        name = entry.path
        allowed = self._keyrings.get(name)
        if allowed is not None:
            if entry.file_digest in allowed:
                return []
            return [
                _failure("keyring.digest_mismatch", entry, index, "key not allowed")
            ]
        if self._ignore_all_keyrings or name in self._ignored or self._excluded(name):
            return []
        allowed = self._buffers.get(name)
        if allowed is None:
            return [_failure("keyring.not_allowed", entry, index, "unknown event")]
        if entry.file_digest in allowed:
            return []
        return [_failure("buffer.digest_mismatch", entry, index, "buffer not allowed")]


def _value_sets(digests) -> dict[str, frozenset[bytes]]:
    # Compare raw bytes: no hex per entry. Digests of different algorithms differ
    # in length (sha256 vs sha3-256 aside, which no policy mixes for one path).
    return {
        name: frozenset(d.value for d in values) for name, values in digests.items()
    }


def _failure(reason: str, entry: Entry, index: int, message: str) -> Failure:
    digest = f"{entry.digest_alg}:{entry.file_digest.hex()}"
    return Failure(reason, index, entry.path, digest, f"{entry.path}: {message}")
