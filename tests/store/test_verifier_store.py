"""The verifier store keeps registrations, state, nonces and bounded results."""

from __future__ import annotations

import dataclasses

import pytest

from cvtpm.attest.result import Failure, Result
from cvtpm.attest.verifier import Registration, ReplayState
from cvtpm.errors import NotFoundError
from cvtpm.store import RESULTS_KEPT, RegistrationConflict, VerifierStore
from tests.tpm.test_structures import ecc_public


def registration(name: str = "web") -> Registration:
    """A registration whose EK certificate is made on the spot."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name_ = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ek")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name_)
        .issuer_name(name_)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return Registration(name, pem, ecc_public().marshal(), banks=["sha1", "sha256"])


def exercise(store: VerifierStore) -> None:
    """Everything a verifier asks of its store, in the order it asks."""
    reg = registration()
    store.save_registration(reg, policy='{"x": 1}')
    assert store.names() == ["web"]
    assert store.registration("web") == reg
    assert store.policy("web") == '{"x": 1}'
    assert store.state("web") == ReplayState()

    state = ReplayState(7, {"sha1": b"\1" * 20, "sha256": b"\2" * 32}, 3, 4)
    store.save_state("web", state)
    assert store.state("web") == state

    store.issue_nonce("web", b"n" * 20)
    assert store.spend_nonce("web", b"n" * 20) is True
    assert store.spend_nonce("web", b"n" * 20) is False
    assert store.nonce_known("web", b"n" * 20)
    assert store.spend_nonce("web", b"x" * 20) is False
    assert not store.nonce_known("web", b"x" * 20)

    for i in range(RESULTS_KEPT + 5):
        failures = [] if i % 2 else [Failure("list.pcr_mismatch", "m", index=i)]
        store.add_result(Result("web", failures, verified_index=i, time=float(i)))
    results = store.results("web", limit=100)
    assert len(results) == RESULTS_KEPT
    assert store.latest_result("web").verified_index == RESULTS_KEPT + 4
    assert results[-1].verified_index == 5

    # The same EK again: an update that keeps state, results and the policy.
    store.save_registration(reg)
    assert store.state("web") == state
    assert len(store.results("web", limit=100)) == RESULTS_KEPT
    assert store.policy("web") == '{"x": 1}'

    # Other banks, or another policy, restart replay; the counters stay.
    store.save_registration(dataclasses.replace(reg, banks=["sha256"]))
    assert store.state("web") == ReplayState(0, {}, 3, 4)
    store.save_state("web", state)
    store.set_policy("web", '{"x": 1}')
    assert store.state("web") == state
    store.set_policy("web", '{"x": 2}')
    assert store.state("web") == ReplayState(0, {}, 3, 4)

    # Another EK under the same name is refused, and changes nothing.
    with pytest.raises(RegistrationConflict, match="another EK"):
        store.save_registration(registration())
    assert store.registration("web").ek_cert_pem == reg.ek_cert_pem

    store.delete("web")
    assert store.names() == []
    with pytest.raises(NotFoundError):
        store.registration("web")


def test_sqlite_store(tmp_path):
    """The default SQLite store does every job of the verifier."""
    store = VerifierStore(f"sqlite:///{tmp_path / 'verifier.db'}")
    exercise(store)
    store.close()


@pytest.mark.postgres
def test_postgresql_store(postgres_url):
    """A real PostgreSQL server, reached by a plain postgresql:// URL, does the same."""
    store = VerifierStore(postgres_url)
    exercise(store)
    store.close()


def test_state_row_is_small(tmp_path):
    """A container's replay state with four banks stays far below 4 KB as JSON."""
    import json

    state = ReplayState(
        10**9,
        {
            "sha1": b"1" * 20,
            "sha256": b"2" * 32,
            "sha384": b"3" * 48,
            "sha512": b"5" * 64,
        },
        2**31,
        2**31,
    )
    assert len(json.dumps(state.to_dict())) < 1024
