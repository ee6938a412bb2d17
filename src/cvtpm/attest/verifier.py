"""The verifier: four numbered steps from evidence to a verdict.

1. registration: the EK certificate chains to a trusted CA and the AK is
   bound to that EK (an AK certificate from the cvtpm CA, or a credential
   activation proven at registration);
2. quote: a TPM-generated quote, signed by the registered AK, over the nonce
   we sent and never accepted before, covering PCR 10 in every expected bank,
   whose digest matches the PCR values presented, with counters that only grow;
3. list: the new entries replayed from the running PCR values stored at the
   last verified entry, until they reach the quoted PCR 10 (a PCR that lags the
   list leaves the remaining entries pending for the next attestation); verified
   entries the evidence repeats must be those verified (cvtpm.attest.listreplay);
4. policy: every newly verified entry is judged by the runtime policy.

Everything is returned as data; the state to keep per container is a
`ReplayState` of a few hundred bytes.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cryptography import x509

from cvtpm.attest import _fastlist, trust
from cvtpm.attest.evidence import IMA_PCR, Evidence
from cvtpm.attest.listreplay import (
    ListReplay,
    replay_entries,
    replay_list,
    replay_raw,
)
from cvtpm.attest.quote import pcr_digest, signature_valid
from cvtpm.attest.result import Failure, Result
from cvtpm.errors import ParseError
from cvtpm.tpm import structures
from cvtpm.tpm.structures import TPM_ST_ATTEST_QUOTE, Attest, Public

__all__ = [
    "ListReplay",
    "Registration",
    "ReplayState",
    "RuntimePolicy",
    "check_policy",
    "check_quote",
    "check_registration",
    "check_templates",
    "replay_entries",
    "replay_list",
    "replay_raw",
    "verify",
]

log = logging.getLogger("cvtpm.attest")

OID_AK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.3")  # tcg-kp-AIKCertificate
# TPMA_OBJECT bits an attestation key must have (Part 2, 8.3.2): it cannot
# leave its TPM and only signs TPM-generated data.
TPMA_FIXEDTPM, TPMA_RESTRICTED, TPMA_SIGN = 1 << 1, 1 << 16, 1 << 18
BOUND_BY_CERTIFICATE = "certificate"
BOUND_BY_ACTIVATION = "activation"


class RuntimePolicy(Protocol):
    """A runtime policy (cvtpm.attest.policy): judges one list entry at a time."""

    def evaluate(self, entry: Any, index: int) -> list[Any]: ...


@dataclass
class Registration:
    """What a verifier holds about one container's vTPM after registering it."""

    name: str
    ek_cert_pem: str
    ak_public: bytes  # marshaled TPMT_PUBLIC
    ak_cert_pem: str = ""
    ca_chain_pem: str = ""  # intermediates the certificates may need
    banks: list[str] = field(default_factory=lambda: ["sha256"])
    daemon_url: str = ""
    activated: bool = False  # a credential activation proved the AK shares the EK's TPM

    @classmethod
    def from_evidence(cls, evidence: Any, daemon_url: str = "") -> Registration:
        """What a container's own evidence says about its keys, to be checked."""
        return cls(
            name=evidence.container,
            ek_cert_pem=evidence.ek_cert_pem,
            ak_public=evidence.ak_public,
            ak_cert_pem=evidence.ak_cert_pem,
            ca_chain_pem=evidence.ca_chain_pem,
            banks=list(evidence.banks),
            daemon_url=daemon_url,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON a client posts to register; registration_from_json reads it."""
        return {
            "name": self.name,
            "ek_cert": self.ek_cert_pem,
            "ak_public": base64.b64encode(self.ak_public).decode(),
            "ak_cert": self.ak_cert_pem,
            "ca_chain": self.ca_chain_pem,
            "banks": list(self.banks),
            "daemon_url": self.daemon_url,
        }

    def same_ek(self, other: Registration) -> bool:
        """True if both name the same endorsement key (certificates may differ).

        A certificate that cannot be read names no key, so it matches nothing.
        """
        try:
            ours = trust.load_certificate(self.ek_cert_pem).public_key()
            theirs = trust.load_certificate(other.ek_cert_pem).public_key()
        except ParseError:
            return False
        return ours == theirs

    @property
    def ak(self) -> Public:
        """The decoded AK public area (ParseError if malformed)."""
        return structures.unmarshal_tpmt_public(self.ak_public)

    def summary(self) -> dict[str, Any]:
        """Fingerprints and names: enough to recognise this registration later."""
        return {
            "name": self.name,
            "ek_fingerprint": trust.fingerprint(
                trust.load_certificate(self.ek_cert_pem)
            ),
            "ak_name": self.ak.name().hex(),
            "banks": list(self.banks),
            "daemon_url": self.daemon_url,
            "bound_by": BOUND_BY_ACTIVATION if self.activated else BOUND_BY_CERTIFICATE,
        }


@dataclass
class ReplayState:
    """The verifier's memory of one container between attestations.

    `policy_digest` names the runtime policy (cvtpm.attest.service.policy_digest)
    that judged entries 0..index-1; under any other policy they must be judged
    again, so the service restarts such a state from entry 0.
    """

    index: int = 0  # entries 0..index-1 are verified
    values: dict[str, bytes] = field(default_factory=dict)  # PCR 10 after them
    reset_count: int | None = None
    restart_count: int | None = None
    policy_digest: str = ""  # "" for no policy

    def restart(self, policy_digest: str) -> ReplayState:
        """Nothing verified yet, to be judged by `policy_digest`; counters kept."""
        return replace(self, index=0, values={}, policy_digest=policy_digest)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (hex values)."""
        return {
            "index": self.index,
            "values": {bank: value.hex() for bank, value in self.values.items()},
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "policy_digest": self.policy_digest,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayState:
        """The inverse of `to_dict`."""
        return cls(
            index=int(data.get("index", 0)),
            values={b: bytes.fromhex(v) for b, v in data.get("values", {}).items()},
            reset_count=data.get("reset_count"),
            restart_count=data.get("restart_count"),
            policy_digest=data.get("policy_digest") or "",
        )


# -- step 1: registration ---------------------------------------------------------


def check_registration(reg: Registration, store: trust.TrustStore) -> list[Failure]:
    """Step 1: the EK certificate chains to a trusted CA and the AK is bound to it."""
    failures: list[Failure] = []
    if not reg.banks:
        # Nothing would be replayed: no list could fail, none would be proven.
        failures.append(Failure("registration.no_banks", "no PCR bank to check"))
    try:
        extra = trust.load_certificates(reg.ca_chain_pem)
        ek_cert = trust.load_certificate(reg.ek_cert_pem)
    except ParseError as exc:
        return [Failure("ek.bad_certificate", str(exc))]
    try:
        store.chain(ek_cert, extra)
    except trust.ChainError as exc:
        failures.append(Failure("ek.untrusted_ca", f"EK certificate: {exc}"))

    try:
        ak = reg.ak
    except ParseError as exc:
        return failures + [Failure("ak.bad_public", str(exc))]
    needed = TPMA_FIXEDTPM | TPMA_RESTRICTED | TPMA_SIGN
    if ak.object_attributes & needed != needed:
        failures.append(
            Failure("ak.bad_attributes", "the AK must be fixedTPM, restricted, sign")
        )

    if reg.activated:
        return failures
    # TODO: an AK certificate is accepted when it names this AK's key, is for an
    # AK and chains to a trusted CA; nothing in it names the EK, so the binding
    # rests on the cvtpm CA certifying only AKs it made itself, in a vTPM just
    # after that vTPM's EKs (cvtpm.vtpm.manufacture). An EK reference in the
    # certificate would close that when CAs are shared.
    if not reg.ak_cert_pem:
        failures.append(Failure("ak.not_bound", "no AK certificate, no activation"))
        return failures
    failures += _check_ak_certificate(reg, ak, extra, store)
    return failures


def _check_ak_certificate(
    reg: Registration,
    ak: Public,
    extra: list[x509.Certificate],
    store: trust.TrustStore,
) -> list[Failure]:
    """The AK certificate names this AK's key, is for an AK, and chains to a root."""
    try:
        cert = trust.load_certificate(reg.ak_cert_pem)
        store.chain(cert, extra)
    except (ParseError, trust.ChainError) as exc:
        return [Failure("ak.not_bound", f"AK certificate: {exc}")]
    try:
        same_key = cert.public_key() == ak.public_key()
    except ValueError:
        same_key = False
    if not same_key:
        return [Failure("ak.not_bound", "the AK certificate is for another key")]
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = [OID_AK_CERTIFICATE]
    if OID_AK_CERTIFICATE not in usage:
        return [Failure("ak.not_bound", "the AK certificate is not for an AK")]
    return []


# -- step 2: the quote ------------------------------------------------------------


def check_quote(
    reg: Registration,
    state: ReplayState,
    evidence: Evidence,
    nonce: bytes,
    nonce_fresh: bool,
) -> tuple[Attest | None, list[Failure], list[str]]:
    """Step 2: the quote is genuine, fresh, covers PCR 10 and matches the values."""
    try:
        attest = structures.unmarshal_tpms_attest(evidence.attest)
        signature = structures.unmarshal_tpmt_signature(evidence.signature)
    except ParseError as exc:
        return None, [Failure("quote.malformed", str(exc))], []
    if attest.type != TPM_ST_ATTEST_QUOTE:
        return None, [Failure("quote.not_a_quote", f"type 0x{attest.type:04x}")], []
    if not signature_valid(reg.ak, signature, evidence.attest):
        forged = Failure("quote.bad_signature", "not signed by the registered AK")
        return None, [forged], []

    failures = []
    if attest.extra_data != nonce:
        failures.append(Failure("quote.nonce_mismatch", "quote is not over our nonce"))
    elif not nonce_fresh:
        failures.append(Failure("quote.nonce_reused", "this nonce was used before"))

    quoted = {sel.bank for sel in attest.attested.pcr_select if IMA_PCR in sel.pcrs}
    missing = [bank for bank in reg.banks if bank not in quoted]
    if missing:
        failures.append(
            Failure("quote.pcr_selection", f"PCR 10 not quoted in {', '.join(missing)}")
        )
    try:
        digest = pcr_digest(attest.attested.pcr_select, evidence.pcrs, signature.hash)
    except KeyError:
        digest = None
    if digest != attest.attested.pcr_digest:
        failures.append(
            Failure("quote.pcr_digest_mismatch", "PCR values differ from those quoted")
        )

    failures_c, events = _check_counters(state, attest)
    return attest, failures + failures_c, events


def _check_counters(state: ReplayState, attest: Attest) -> tuple[list[Failure], list]:
    """resetCount and restartCount never go back (Part 1, 36.5); a reset is reported."""
    clock = attest.clock_info
    if state.reset_count is None:
        return [], []
    if clock.reset_count < state.reset_count or (
        clock.reset_count == state.reset_count
        and clock.restart_count < state.restart_count
    ):
        message = (
            f"resetCount/restartCount went from {state.reset_count}/"
            f"{state.restart_count} to {clock.reset_count}/{clock.restart_count}"
        )
        return [Failure("quote.counter_regressed", message)], []
    if clock.reset_count > state.reset_count:
        # TODO: a reset zeroes PCR 10, so replay from the stored running values
        # then fails (list.pcr_mismatch) unless the agent re-extends the whole
        # list; restarting replay at entry 0 needs the whole list again. It
        # matters once vTPMs are reset without their lists being replayed.
        return [], ["quote.tpm_reset"]
    return [], []


# -- step 3: the list (cvtpm.attest.listreplay) ------------------------------------


def check_templates(
    replayed: ListReplay, count: int, start: int, policy: RuntimePolicy | None = None
) -> list[Failure]:
    """With only the sha1 bank quoted, template data must match its template digest.

    The `policy` that will judge the entries lends the digests of the template
    data it allows, worked out once per policy, so those are not hashed here.
    """
    if replayed.raw:
        known = _fastlist.allowed_templates(policy) if policy is not None else None
        bad = _fastlist.bad_templates(replayed.entries[:count], known)
    else:
        entries = replayed.entries[:count]
        bad = [i for i, e in enumerate(entries) if not e.template_digest_matches()]
    failures = []
    for position in bad:
        entry, failure = _decoded(replayed, position, start)
        if failure is None:
            message = "template digest differs"
            index = start + position
            failure = Failure("list.template_mismatch", message, index, entry.path)
        failures.append(failure)
    return failures


def _once_per_entry(failures: list[Failure]) -> list[Failure]:
    """`failures` with each (reason, entry) once: an entry that does not decode
    is found by every step that reads it (templates, policy)."""
    seen: set[tuple[str, int]] = set()
    kept = []
    for failure in failures:
        key = (failure.reason, failure.index)
        if failure.index is None or key not in seen:
            kept.append(failure)
        if failure.index is not None:
            seen.add(key)
    return kept


def check_decodable(replayed: ListReplay, count: int, start: int) -> list[Failure]:
    """Without a policy, every newly verified entry must still decode.

    The fast path splits a binary list by its length fields only; a policy
    then decodes every entry it does not allow outright (check_policy). With
    no policy, nothing else would: an entry the PCR covers but whose fields
    do not parse (an unknown hash, a name without its NUL) is list.malformed.
    """
    if not replayed.raw:
        return []  # decoded when the list was parsed
    failures = []
    for position in _fastlist.malformed(replayed.entries[:count]):
        _, failure = _decoded(replayed, position, start)
        if failure is not None:
            failures.append(failure)
    return failures


# -- step 4: the runtime policy --------------------------------------------------------


def check_policy(
    policy: RuntimePolicy, replayed: ListReplay, count: int, start: int
) -> list[Failure]:
    """Step 4: every newly verified entry against the runtime policy."""
    allowed = _fastlist.allowed_templates(policy) if replayed.raw else None
    if allowed is None:
        positions = range(count)
    else:
        positions = _fastlist.needing_policy(replayed.entries[:count], allowed)
    failures = []
    for position in positions:
        entry, failure = _decoded(replayed, position, start)
        if failure is not None:
            failures.append(failure)
            continue
        found = policy.evaluate(entry, start + position)
        failures += [Failure.coerce(f) for f in found]
    return failures


def _decoded(
    replayed: ListReplay, position: int, start: int
) -> tuple[Any, Failure | None]:
    """The entry at `position`, or the failure of one whose template data is bad.

    The fast path splits entries by their lengths only; the PCR may well cover
    an entry whose fields do not parse, and that is a verdict, not a crash.
    """
    try:
        return replayed.entry(position), None
    except ParseError as exc:
        return None, Failure("list.malformed", exc.message, index=start + position)


# -- all steps ------------------------------------------------------------------------


def verify(
    reg: Registration,
    state: ReplayState,
    evidence: Evidence,
    nonce: bytes,
    *,
    trust_store: trust.TrustStore,
    policy: RuntimePolicy | None = None,
    nonce_fresh: bool = True,
) -> tuple[Result, ReplayState]:
    """Judge `evidence` for the nonce we sent; returns the result and the next state.

    The state only advances when the verdict is trusted, so a failure is
    reported again on the next attestation until what caused it is fixed.
    """
    started = time.perf_counter()
    result = Result(reg.name, start_index=state.index, verified_index=state.index)
    # TODO: step 1 re-checks the certificate chains every time (about a
    # millisecond, most of an attestation with no new entries); caching its
    # outcome per registration until a certificate expires would remove that.
    result.failures += check_registration(reg, trust_store)
    if evidence.container != reg.name:
        result.failures.append(Failure("evidence.wrong_container", evidence.container))

    # Step 2 failures leave nothing trustworthy to replay against.
    attest, failures, result.events = check_quote(
        reg, state, evidence, nonce, nonce_fresh
    )
    result.failures += failures
    if failures:
        return _finish(result, state, started), state

    replayed, failures = replay_list(state, evidence, list(reg.banks))
    result.failures += failures
    if replayed is None or replayed.boundary is None:
        if replayed is not None:
            result.pending = len(replayed.entries)
        return _finish(result, state, started), state

    count = replayed.boundary
    result.new_entries = count
    result.verified_index = state.index + count
    result.pending = len(replayed.entries) - count
    if list(reg.banks) == ["sha1"]:
        result.failures += check_templates(replayed, count, state.index, policy)
    if policy is not None:
        result.failures += check_policy(policy, replayed, count, state.index)
    else:
        result.failures += check_decodable(replayed, count, state.index)
    result.failures = _once_per_entry(result.failures)

    if not result.trusted:
        result.verified_index = state.index
        return _finish(result, state, started), state
    clock = attest.clock_info
    new_state = replace(
        state,
        index=result.verified_index,
        values=replayed.values,
        reset_count=clock.reset_count,
        restart_count=clock.restart_count,
    )
    return _finish(result, new_state, started), new_state


def _finish(result: Result, state: ReplayState, started: float) -> Result:
    """Stamp the result and write the one log line of this attestation."""
    result.time = time.time()
    reasons = ",".join(sorted({f.reason for f in result.failures})) or "-"
    log.info(
        "attestation container=%s verdict=%s reasons=%s start=%d verified=%d"
        " pending=%d new=%d ms=%.2f",
        result.container,
        result.verdict.replace(" ", "_"),
        reasons,
        result.start_index,
        result.verified_index,
        result.pending,
        result.new_entries,
        (time.perf_counter() - started) * 1000,
        extra={"attestation": result.to_dict()},
    )
    return result
