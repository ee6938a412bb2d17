"""The verifier's verdicts on evidence from a real swtpm: each attack, its reason."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from cvtpm.attest.evidence import Evidence, collect_evidence
from cvtpm.attest.trust import TrustStore
from cvtpm.attest.verifier import Registration, ReplayState, verify
from cvtpm.ima.binary import dump_binary, parse_binary
from cvtpm.ima.entry import ima_legacy, violation
from cvtpm.tpm.templates import ak_template
from tests.attest.conftest import files, make_vtpm

pytestmark = pytest.mark.swtpm


class Attestor:
    """The verifier's side of a conversation with one vTPM, kept in memory."""

    def __init__(self, vtpm, ca, policy=None):
        self.vtpm = vtpm
        self.trust = TrustStore()
        self.trust.add_pem(ca.root_pem)
        self.reg = Registration(
            vtpm.name,
            vtpm.ek_cert_pem,
            vtpm.ak_public,
            vtpm.ak_cert_pem,
            vtpm.ca_chain_pem,
            vtpm.banks,
        )
        self.state = ReplayState()
        self.policy = policy
        self.used: set[bytes] = set()

    def evidence(
        self, nonce: bytes | None = None, since: int | None = None
    ) -> Evidence:
        """Fresh evidence from the vTPM, through its JSON form."""
        nonce = nonce or os.urandom(20)
        with self.vtpm.client() as tpm:
            since = self.state.index if since is None else since
            evidence = collect_evidence(
                tpm, self.vtpm, nonce, self.vtpm.list_path, since
            )
        return Evidence.from_json(evidence.to_json())

    def check(self, evidence: Evidence, nonce: bytes | None = None):
        """Verify evidence for `nonce` (default: the one it carries)."""
        nonce = evidence.nonce if nonce is None else nonce
        fresh = nonce not in self.used
        self.used.add(nonce)
        result, self.state = verify(
            self.reg,
            self.state,
            evidence,
            nonce,
            trust_store=self.trust,
            policy=self.policy,
            nonce_fresh=fresh,
        )
        return result

    def attest(self):
        """One complete round: nonce, evidence, verdict."""
        return self.check(self.evidence())


def reasons(result) -> list[str]:
    return [f.reason for f in result.failures]


def test_clean_list_is_trusted(vtpm, local_ca, caplog):
    """A list whose entries are all in PCR 10 of every bank is trusted; one log line."""
    vtpm.measure(files(20) + [violation("/tmp/racy")])
    attestor = Attestor(vtpm, local_ca)
    with caplog.at_level(logging.INFO, logger="cvtpm.attest"):
        result = attestor.attest()
    assert result.trusted, result.failures
    assert (result.verified_index, result.new_entries, result.pending) == (22, 22, 0)
    lines = [r for r in caplog.records if r.name == "cvtpm.attest"]
    assert len(lines) == 1 and "verdict=trusted" in lines[0].getMessage()


def test_state_per_container_is_small(vtpm, local_ca):
    """What the verifier keeps between attestations fits in well under 4 KB."""
    vtpm.measure(files(5))
    attestor = Attestor(vtpm, local_ca)
    assert attestor.attest().trusted
    import json

    assert len(json.dumps(attestor.state.to_dict())) < 1024


def test_quote_by_another_ak_has_a_bad_signature(vtpm, local_ca):
    """A quote signed by an AK other than the registered one is not trusted."""
    with vtpm.client() as tpm:
        tpm.create_persistent_primary(ak_template("rsa").marshal(), 0x81010005)
    attestor = Attestor(vtpm, local_ca)
    other = dataclasses.replace(vtpm, ak_handle=0x81010005)
    nonce = os.urandom(20)
    with other.client() as tpm:
        evidence = collect_evidence(tpm, other, nonce, vtpm.list_path, 0)
    assert reasons(attestor.check(evidence)) == ["quote.bad_signature"]


def test_reused_nonce_is_refused(vtpm, local_ca):
    """Evidence replayed with the nonce it was first accepted for is not trusted."""
    attestor = Attestor(vtpm, local_ca)
    evidence = attestor.evidence()
    assert attestor.check(evidence).trusted
    attestor.state = ReplayState()
    assert reasons(attestor.check(evidence)) == ["quote.nonce_reused"]


def test_quote_over_another_nonce_is_refused(vtpm, local_ca):
    """A quote whose extraData is not the nonce we sent is not trusted."""
    attestor = Attestor(vtpm, local_ca)
    evidence = attestor.evidence(nonce=b"old-nonce-from-earlier")
    assert reasons(attestor.check(evidence, b"the-nonce-we-sent-now")) == [
        "quote.nonce_mismatch"
    ]


def test_tampered_pcr_value_breaks_the_digest(vtpm, local_ca):
    """A PCR value changed after quoting no longer matches the quoted digest."""
    vtpm.measure(files(3))
    attestor = Attestor(vtpm, local_ca)
    evidence = attestor.evidence()
    evidence.pcrs["sha256"][10] = bytes(32)
    assert reasons(attestor.check(evidence)) == ["quote.pcr_digest_mismatch"]


@pytest.mark.parametrize("damage", ["removed", "reordered"])
def test_damaged_list_matches_no_boundary(vtpm, local_ca, damage):
    """A list with an entry removed or two swapped fails at the first unproven entry."""
    vtpm.measure(files(10))
    listed = list(vtpm.entries)
    if damage == "removed":
        del listed[4]
    else:
        listed[4], listed[5] = listed[5], listed[4]
    vtpm.write_list(listed)
    result = Attestor(vtpm, local_ca).attest()
    assert reasons(result) == ["list.pcr_mismatch"]
    assert result.failures[0].index == 0 and result.verified_index == 0


def test_ek_certificate_from_unknown_ca_is_untrusted(swtpm_dir, other_ca, local_ca):
    """An EK certificate issued by a CA outside the trust store is not trusted."""
    vtpm = make_vtpm(swtpm_dir, other_ca)
    attestor = Attestor(vtpm, local_ca)
    result = attestor.attest()
    assert "ek.untrusted_ca" in reasons(result)
    assert not result.trusted


def test_ak_certificate_for_another_key_is_not_bound(vtpm, local_ca):
    """An AK certificate that names a different key does not bind the AK."""
    attestor = Attestor(vtpm, local_ca)
    attestor.reg.ak_cert_pem = vtpm.ek_cert_pem
    assert "ak.not_bound" in reasons(attestor.attest())


def test_a_registration_without_banks_is_never_trusted(vtpm, local_ca):
    """With no bank to replay in, no list is checked, so none may be trusted:
    not even a tampered one whose quote is otherwise genuine."""
    vtpm.measure(files(3))
    attestor = Attestor(vtpm, local_ca)
    attestor.reg.banks = []
    evidence = attestor.evidence()
    entries = parse_binary(evidence.entries)
    dropped = dump_binary([entries[0], entries[2]])  # one entry taken out
    evidence = dataclasses.replace(evidence, entries=dropped)

    result = attestor.check(evidence)
    assert not result.trusted and "registration.no_banks" in reasons(result)
    assert result.verified_index == 0


def test_lagging_pcr_is_accepted_at_a_boundary(vtpm, local_ca):
    """Entries listed after the quote stay pending and are proven by the next quote."""
    vtpm.measure(files(5))
    attestor = Attestor(vtpm, local_ca)
    late = files(3, start=100)
    vtpm.measure(late, extend=False)  # in the list, not yet in the PCR
    result = attestor.attest()
    assert result.trusted
    assert (result.verified_index, result.pending) == (6, 3)

    with vtpm.client() as tpm:
        for entry in late:
            tpm.pcr_extend(10, {b: entry.pcr_extend_digest(b) for b in vtpm.banks})
    result = attestor.attest()
    assert result.trusted
    assert (result.start_index, result.verified_index, result.new_entries) == (6, 9, 3)


def test_incremental_attestation_replays_only_new_entries(vtpm, local_ca):
    """A second attestation receives and replays only what was appended since."""
    vtpm.measure(files(50))
    attestor = Attestor(vtpm, local_ca)
    assert attestor.attest().new_entries == 51

    assert attestor.attest().new_entries == 0
    vtpm.measure(files(7, start=500))
    evidence = attestor.evidence()
    assert evidence.since == 51
    result = attestor.check(evidence)
    assert result.trusted and (result.new_entries, result.verified_index) == (7, 58)


def test_incremental_attestation_detects_tampering_after_the_boundary(vtpm, local_ca):
    """Entries appended after a verified boundary that the PCR does not hold fail."""
    vtpm.measure(files(5))
    attestor = Attestor(vtpm, local_ca)
    assert attestor.attest().trusted
    vtpm.measure(files(2, start=50))
    vtpm.entries[-1] = files(1, start=99)[0]
    vtpm.write_list()
    result = attestor.attest()
    assert reasons(result) == ["list.pcr_mismatch"]
    assert result.failures[0].index == 6


def test_counter_regression_is_refused(vtpm, local_ca):
    """A quote whose resetCount is lower than one seen before is not trusted."""
    attestor = Attestor(vtpm, local_ca)
    assert attestor.attest().trusted
    attestor.state.reset_count += 1
    assert reasons(attestor.attest()) == ["quote.counter_regressed"]


def test_tpm_reset_is_reported(vtpm, local_ca):
    """A higher resetCount than last time is reported as an event."""
    attestor = Attestor(vtpm, local_ca)
    assert attestor.attest().trusted
    attestor.state.reset_count -= 1
    assert "quote.tpm_reset" in attestor.attest().events


def test_missing_bank_in_selection_is_refused(vtpm, local_ca):
    """A quote that leaves out an expected bank is not trusted."""
    attestor = Attestor(vtpm, local_ca)
    vtpm.banks = ["sha256"]
    evidence = attestor.evidence()
    assert "quote.pcr_selection" in reasons(attestor.check(evidence))


def test_failures_are_reported_again_until_fixed(vtpm, local_ca):
    """A failed attestation does not advance the verified index."""
    vtpm.measure(files(3))
    attestor = Attestor(vtpm, local_ca)
    vtpm.write_list(vtpm.entries[:-1] + files(1, start=77))
    assert not attestor.attest().trusted
    assert attestor.state.index == 0
    vtpm.write_list()
    assert attestor.attest().verified_index == 4


def test_legacy_template_list_is_verified_on_the_careful_path(vtpm, local_ca):
    """A list holding the legacy `ima` template is parsed by cvtpm.ima and trusted."""
    vtpm.measure([ima_legacy("/bin/old", bytes(range(20)))] + files(2))
    result = Attestor(vtpm, local_ca).attest()
    assert result.trusted and result.verified_index == 4


def test_sha1_only_quote_catches_changed_template_data(vtpm, local_ca):
    """With only sha1 quoted, a path changed under its old template digest fails."""
    vtpm.banks = ["sha1"]
    vtpm.measure(files(3))
    attestor = Attestor(vtpm, local_ca)
    forged = vtpm.entries[2]
    vtpm.entries[2] = dataclasses.replace(
        forged, template_data=forged.template_data.replace(b"tool1", b"toolX")
    )
    vtpm.write_list()
    result = attestor.attest()
    assert reasons(result) == ["list.template_mismatch"]
    assert result.failures[0].index == 2


def undecodable_entries() -> list:
    """ima-ng entries framed right whose fields do not parse, digests correct."""
    import hashlib

    from cvtpm.ima.entry import Entry

    bad_data = [
        b"\x28\0\0\0sha999:\0" + bytes(32) + b"\x05\0\0\0/evil",  # unknown hash
        b"\x28\0\0\0sha256:\0" + bytes(32) + b"\x04\0\0\0/bad",  # name without NUL
        b"\x28\0\0\0sha256:\0" + bytes(32) + b"\x05\0\0\0/ok!\0tail",  # left over
    ]
    return [
        Entry(10, "ima-ng", d, hashlib.sha1(d).digest(), "sha256", bytes(32), "?")
        for d in bad_data
    ]


@pytest.mark.parametrize("banks", [["sha1"], None])
def test_entries_that_do_not_decode_are_malformed_without_a_policy(
    vtpm, local_ca, banks
):
    """The PCR covers them, but a list whose entries do not parse is not trusted.

    With no runtime policy nothing else decodes the entries the fast path
    split by their lengths, in either kind of registration.
    """
    if banks is not None:
        vtpm.banks = banks
    vtpm.measure(files(2))
    first = len(vtpm.entries)
    vtpm.measure(undecodable_entries())
    result = Attestor(vtpm, local_ca).attest()
    assert not result.trusted
    assert [(f.reason, f.index) for f in result.failures] == [
        ("list.malformed", first),
        ("list.malformed", first + 1),
        ("list.malformed", first + 2),
    ]
    assert "sha999" in result.failures[0].message


def test_an_entry_that_does_not_decode_is_reported_once_with_a_policy(vtpm, local_ca):
    """Found by the template check and by the policy, it is one failure."""
    from cvtpm.attest.policy import PolicyEvaluator, RuntimePolicy

    vtpm.banks = ["sha1"]
    vtpm.measure(files(2))
    bad = dataclasses.replace(undecodable_entries()[0], template_digest=b"\1" * 20)
    vtpm.measure([bad])
    policy = PolicyEvaluator(RuntimePolicy(digests={}))
    result = Attestor(vtpm, local_ca, policy=policy).attest()
    malformed = [f.index for f in result.failures if f.reason == "list.malformed"]
    assert malformed == [len(vtpm.entries) - 1]
