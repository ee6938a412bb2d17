"""The verifier as a service: registration, nonces, attestation rounds, stored results.

This is what `cvtpm verifier serve` and `cvtpm attest` call; the HTTP layer
only routes to it, and the checks themselves live in cvtpm.attest.verifier.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cvtpm.attest import credential, trust
from cvtpm.attest.evidence import Evidence
from cvtpm.attest.result import Failure, Result
from cvtpm.attest.verifier import (
    Registration,
    RuntimePolicy,
    check_registration,
    verify,
)
from cvtpm.errors import CvtpmError, ParseError
from cvtpm.store import VerifierStore
from cvtpm.tpm.structures import tpm2_name, unmarshal_tpmt_public

NONCE_SIZE = 20
FETCH_TIMEOUT = 30.0

# Fetches evidence for (registration, nonce, since); raises CvtpmError or httpx errors.
Fetcher = Callable[[Registration, bytes, int], Evidence]
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


def fetch_from_daemon(reg: Registration, nonce: bytes, since: int) -> Evidence:
    """GET the daemon's evidence endpoint for this container."""
    if not reg.daemon_url:
        raise CvtpmError(f"no daemon URL is registered for {reg.name!r}")
    url = f"{reg.daemon_url.rstrip('/')}/v1/containers/{reg.name}/evidence"
    headers = {}
    token = os.environ.get("CVTPM_DAEMON_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.get(
        url,
        params={"nonce": nonce.hex(), "since": since},
        headers=headers,
        timeout=FETCH_TIMEOUT,
    )
    response.raise_for_status()
    return Evidence.from_json(response.json())


@functools.lru_cache(maxsize=64)
def load_runtime_policy(text: str | bytes) -> RuntimePolicy:
    """A runtime policy, ready to evaluate, from cvtpm or Keylime JSON text.

    Loaded policies are cached by their text: an incremental attestation should
    cost its new entries, not a reload of a policy of thousands of files.
    """
    from cvtpm.attest import policy

    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ParseError(f"runtime policy: not JSON ({exc})") from None
    if isinstance(doc, dict) and "meta" in doc and "cvtpm_runtime_policy" not in doc:
        return policy.PolicyEvaluator(policy.load_keylime(doc))
    return policy.PolicyEvaluator(policy.load(doc))


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

        The challenge is a TPM2_MakeCredential to the EK, bound to the AK's name;
        whoever answers it with the secret (TPM2_ActivateCredential) proves the
        AK lives in the TPM of that EK.
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
        if not wants_activation:
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
        """Replace the runtime policy of `name` (checked before it is stored)."""
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
        reg = self.store.registration(name)
        nonce = self.new_nonce(name)
        since = self.store.state(name).index
        try:
            evidence = self.fetch(reg, nonce, since)
        except (CvtpmError, httpx.HTTPError, ValueError) as exc:
            result = Result(name, [Failure("evidence.unavailable", str(exc))])
            result.start_index = result.verified_index = since
            return self._record(result)
        return self.submit(name, evidence, nonce)

    def submit(
        self, name: str, evidence: Evidence, nonce: bytes | None = None
    ) -> Result:
        """Verify evidence for the nonce we issued (default: the one it carries)."""
        reg = self.store.registration(name)
        nonce = evidence.nonce if nonce is None else nonce
        fresh = self.store.spend_nonce(name, nonce)
        if not fresh and not self.store.nonce_known(name, nonce):
            # Never issued by us: the quote cannot be over a nonce we sent.
            nonce = b""
        policy_text = self.store.policy(name)
        policy = self.load_policy(policy_text) if policy_text else None
        result, state = verify(
            reg,
            self.store.state(name),
            evidence,
            nonce,
            trust_store=self.trust,
            policy=policy,
            nonce_fresh=fresh,
        )
        if result.trusted:
            # TODO: two attestations of one container at once both start from
            # the same state and the last to finish wins; both states are valid,
            # but a row lock around verify would keep the newest. It matters
            # when several verifier replicas share one database.
            self.store.save_state(name, state)
        return self._record(result)

    def latest(self, name: str) -> Result | None:
        """The newest stored result of `name`."""
        return self.store.latest_result(name)

    def _record(self, result: Result) -> Result:
        self.store.add_result(result)
        return result


def registration_from_json(data: dict[str, Any]) -> Registration:
    """A Registration from the JSON a client posts (AK public area in base64)."""
    try:
        ak_public = base64.b64decode(data["ak_public"], validate=True)
        unmarshal_tpmt_public(ak_public)
        return Registration(
            name=str(data["name"]),
            ek_cert_pem=str(data["ek_cert"]),
            ak_public=ak_public,
            ak_cert_pem=str(data.get("ak_cert") or ""),
            ca_chain_pem=str(data.get("ca_chain") or ""),
            banks=[str(b) for b in data.get("banks") or ["sha256"]],
            daemon_url=str(data.get("daemon_url") or ""),
        )
    except KeyError as exc:
        raise ParseError(f"registration: missing field {exc}") from None
    except ValueError as exc:
        if isinstance(exc, ParseError):
            raise
        raise ParseError(f"registration: {exc}") from None
