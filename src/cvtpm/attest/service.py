"""The verifier as a service: registration, nonces, attestation rounds, stored results.

This is what `cvtpm verifier serve` and `cvtpm attest` call; the HTTP layer
only routes to it, and the checks themselves live in cvtpm.attest.verifier.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cvtpm.attest import credential, trust
from cvtpm.attest.evidence import Evidence
from cvtpm.attest.fetch import (
    EvidenceUnavailable,
    Fetcher,
    check_daemon_url,
    daemon_fetcher,
    fetch_from_daemon,
)
from cvtpm.attest.result import Failure, Result
from cvtpm.attest.verifier import (
    Registration,
    ReplayState,
    RuntimePolicy,
    check_registration,
    verify,
)
from cvtpm.errors import CvtpmError, ParseError
from cvtpm.ima.entry import BANK_SIZES
from cvtpm.store import VerifierStore
from cvtpm.tpm.structures import tpm2_name, unmarshal_tpmt_public

__all__ = [
    "EvidenceUnavailable",
    "Fetcher",
    "RegistrationOutcome",
    "VerifierService",
    "daemon_fetcher",
    "fetch_from_daemon",
    "load_runtime_policy",
    "policy_digest",
    "registration_from_json",
]

NONCE_SIZE = 20
# The event of an attestation that judged the whole list again under a new policy.
POLICY_CHANGED = "policy.changed"

PolicyLoader = Callable[[str], RuntimePolicy]


@dataclass
class RegistrationOutcome:
    """What registering a container led to: accepted or not, and maybe a challenge."""

    name: str
    accepted: bool
    failures: list[Failure] = field(default_factory=list)
    challenge: dict[str, str] | None = None  # base64 credential blob + secret

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "accepted": self.accepted,
            "failures": [f.to_dict() for f in self.failures],
            "challenge": self.challenge,
        }


@functools.lru_cache(maxsize=64)
def load_runtime_policy(text: str | bytes) -> RuntimePolicy:
    """A runtime policy, ready to evaluate, from cvtpm or Keylime JSON text.

    Loaded policies are cached by their text: an incremental attestation should
    cost its new entries, not a reload of a policy of thousands of files.
    """
    from cvtpm.attest import policy

    try:
        doc = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"runtime policy: not UTF-8 text (byte {exc.start} is 0x"
            f"{exc.object[exc.start]:02x})"
        ) from None
    except ValueError as exc:
        raise ParseError(f"runtime policy: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(
            type(doc), f"a {type(doc).__name__}"
        )
        raise ParseError(f"runtime policy: expected a JSON object, not {kind}")
    if "meta" in doc and "cvtpm_runtime_policy" not in doc:
        return policy.PolicyEvaluator(policy.load_keylime(doc))
    return policy.PolicyEvaluator(policy.load(doc))


def policy_digest(text: str | None) -> str:
    """The name a ReplayState keeps of the policy that judged it ("" for none)."""
    return "" if text is None else hashlib.sha256(text.encode()).hexdigest()


class VerifierService:
    """Registers containers and attests them against a trust store and the database."""

    def __init__(
        self,
        store: VerifierStore,
        trust_store: trust.TrustStore,
        *,
        fetch: Fetcher = fetch_from_daemon,
        load_policy: PolicyLoader = load_runtime_policy,
    ):
        self.store = store
        self.trust = trust_store
        self.fetch = fetch
        self.load_policy = load_policy

    # -- registration ---------------------------------------------------------------

    def register(
        self, reg: Registration, policy: str | None = None
    ) -> RegistrationOutcome:
        """Check and store a registration; without an AK certificate, issue a challenge.

        Registering a name again with the same EK updates it in place (a policy
        of None keeps the stored one); with another EK it is refused
        (cvtpm.store.RegistrationConflict). The challenge is a
        TPM2_MakeCredential to the EK, bound to the AK's name; whoever answers
        it with the secret (TPM2_ActivateCredential) proves the AK lives in the
        TPM of that EK.
        """
        if policy is not None:
            self.load_policy(policy)  # refuse a broken policy at the door
        wants_activation = not reg.ak_cert_pem and not reg.activated
        failures = check_registration(reg, self.trust)
        if wants_activation:
            failures = [f for f in failures if f.reason != "ak.not_bound"]
        if failures:
            return RegistrationOutcome(reg.name, False, failures)
        self.store.save_registration(reg, policy)
        # The same AK registered again keeps an activation it already proved.
        if not wants_activation or self.store.registration(reg.name).activated:
            return RegistrationOutcome(reg.name, True)

        secret = os.urandom(32)
        ek = credential.ek_public_from_certificate(
            trust.load_certificate(reg.ek_cert_pem)
        )
        blob, encrypted = credential.make_credential(
            ek, tpm2_name(reg.ak_public), secret
        )
        digest = hashlib.sha256(secret).hexdigest()
        self.store.set_activation(reg.name, digest, activated=False)
        challenge = {
            "credential_blob": base64.b64encode(blob).decode(),
            "encrypted_secret": base64.b64encode(encrypted).decode(),
        }
        return RegistrationOutcome(reg.name, True, challenge=challenge)

    def activate(self, name: str, secret: bytes) -> bool:
        """End a credential activation: True (AK now bound) if the secret is right."""
        expected = self.store.activation_digest(name)
        if expected is None:
            return False
        if not hmac.compare_digest(hashlib.sha256(secret).hexdigest(), expected):
            return False
        self.store.set_activation(name, None, activated=True)
        return True

    def set_policy(self, name: str, policy: str | None) -> None:
        """Replace the runtime policy of `name`; a new one judges the whole list again.

        The policy is checked before it is stored. The store restarts replay
        at once, and every attestation also compares the policy its state was
        judged by (ReplayState.policy_digest), so an attestation that was under
        way with the old policy cannot carry its verdicts over.
        """
        if policy is not None:
            self.load_policy(policy)
        self.store.set_policy(name, policy)

    # -- attestation ------------------------------------------------------------------

    def new_nonce(self, name: str) -> bytes:
        """A fresh nonce for `name`, remembered until evidence spends it."""
        nonce = os.urandom(NONCE_SIZE)
        self.store.issue_nonce(name, nonce)
        return nonce

    def attest(self, name: str) -> Result:
        """One round: a nonce, evidence from the daemon, a stored result."""
        judging = self._judging(name)
        nonce = self.new_nonce(name)
        since = judging.state.index
        try:
            evidence = self.fetch(judging.reg, nonce, since)
        except (CvtpmError, OSError) as exc:
            message = exc.explain() if isinstance(exc, CvtpmError) else str(exc)
            result = Result(name, [Failure("evidence.unavailable", message)])
            result.start_index = result.verified_index = since
            return self._record(result)
        return self._verify(judging, evidence, nonce)

    def submit(
        self, name: str, evidence: Evidence, nonce: bytes | None = None
    ) -> Result:
        """Verify evidence for the nonce we issued (default: the one it carries)."""
        return self._verify(self._judging(name), evidence, nonce)

    def latest(self, name: str) -> Result | None:
        """The newest stored result of `name`."""
        return self.store.latest_result(name)

    def _judging(self, name: str) -> _Judging:
        """What judges `name` now: its registration, policy and replay state.

        A state judged by another policy than the current one starts over from
        entry 0, so every entry is judged by the policy in force.
        """
        reg = self.store.registration(name)
        text = self.store.policy(name)
        policy = self.load_policy(text) if text else None
        state = self.store.state(name)
        digest = policy_digest(text)
        events = []
        if state.policy_digest != digest:
            if state.index > 0:
                events.append(POLICY_CHANGED)
            state = state.restart(digest)
        return _Judging(reg, policy, state, events)

    def _verify(
        self, judging: _Judging, evidence: Evidence, nonce: bytes | None
    ) -> Result:
        name = judging.reg.name
        nonce = evidence.nonce if nonce is None else nonce
        fresh = self.store.spend_nonce(name, nonce)
        if not fresh and not self.store.nonce_known(name, nonce):
            # Never issued by us: the quote cannot be over a nonce we sent.
            nonce = b""
        result, state = verify(
            judging.reg,
            judging.state,
            evidence,
            nonce,
            trust_store=self.trust,
            policy=judging.policy,
            nonce_fresh=fresh,
        )
        result.events[:0] = judging.events
        if result.trusted:
            # TODO: two attestations of one container at once both start from
            # the same state and the last to finish wins; both states are valid,
            # but a row lock around verify would keep the newest. It matters
            # when several verifier replicas share one database.
            self.store.save_state(name, state)
        return self._record(result)

    def _record(self, result: Result) -> Result:
        self.store.add_result(result)
        return result


@dataclass
class _Judging:
    """A container's registration, runtime policy and state for one attestation."""

    reg: Registration
    policy: RuntimePolicy | None
    state: ReplayState
    events: list[str]


def registration_from_json(data: dict[str, Any]) -> Registration:
    """A Registration from the JSON a client posts (AK public area in base64).

    A ParseError names the field that is missing or wrong.
    """
    if not isinstance(data, dict):
        raise ParseError("registration: expected a JSON object")
    for key in ("name", "ek_cert", "ak_public"):
        if key not in data:
            raise ParseError(f"registration: field {key!r} is missing")
    try:
        ak_public = base64.b64decode(data["ak_public"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ParseError("registration: field 'ak_public' is not base64") from None
    try:
        unmarshal_tpmt_public(ak_public)
    except ParseError as exc:
        raise ParseError(
            f"registration: field 'ak_public' is not a TPMT_PUBLIC ({exc})"
        ) from None
    banks = [str(b) for b in data.get("banks") or ["sha256"]]
    unknown = [bank for bank in banks if bank not in BANK_SIZES]
    if unknown:
        raise ParseError(
            f"registration: field 'banks' has {unknown[0]!r}, not a PCR bank"
            f" ({', '.join(BANK_SIZES)})"
        )
    daemon_url = str(data.get("daemon_url") or "")
    if daemon_url:
        try:
            daemon_url = check_daemon_url(daemon_url)
        except ParseError as exc:
            raise ParseError(f"registration: field 'daemon_url': {exc}") from None
    return Registration(
        name=str(data["name"]),
        ek_cert_pem=str(data["ek_cert"]),
        ak_public=ak_public,
        ak_cert_pem=str(data.get("ak_cert") or ""),
        ca_chain_pem=str(data.get("ca_chain") or ""),
        banks=banks,
        daemon_url=daemon_url,
    )
