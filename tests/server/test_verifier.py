"""The verifier's HTTP API: authenticated, described by OpenAPI, and only routing."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cvtpm.attest.endpoint import serve_evidence
from cvtpm.attest.evidence import Evidence, collect_evidence
from cvtpm.attest.service import VerifierService, fetch_from_daemon
from cvtpm.attest.trust import TrustStore
from cvtpm.ca.authority import TpmIdentity
from cvtpm.server.verifier import create_app
from cvtpm.store import VerifierStore
from tests.attest.conftest import files, make_vtpm

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def direct_fetch(vtpm):
    """A fetcher that quotes the test's vTPM in-process, as the daemon would."""

    def fetch(reg, nonce, since):
        with vtpm.client() as tpm:
            evidence = collect_evidence(tpm, vtpm, nonce, vtpm.list_path, since)
        return Evidence.from_json(evidence.to_json())

    return fetch


def make_client(tmp_path, ca, fetch=None, **options) -> TestClient:
    trust = TrustStore()
    trust.add_pem(ca.root_pem)
    store = VerifierStore(f"sqlite:///{tmp_path / 'verifier.db'}")
    service = VerifierService(store, trust, fetch=fetch or fetch_from_daemon)
    return TestClient(create_app(service, TOKEN, **options))


def registration(vtpm, **extra) -> dict:
    body = {
        "name": vtpm.name,
        "ek_cert": vtpm.ek_cert_pem,
        "ak_public": base64.b64encode(vtpm.ak_public).decode(),
        "ak_cert": vtpm.ak_cert_pem,
        "ca_chain": vtpm.ca_chain_pem,
        "banks": vtpm.banks,
    }
    body.update(extra)
    return body


def test_openapi_is_served_and_routes_need_the_token(tmp_path, local_ca):
    """OpenAPI is public; every container route refuses a missing or wrong token."""
    client = make_client(tmp_path, local_ca)
    spec = client.get("/openapi.json").json()
    assert "/v1/containers/{name}/attest" in spec["paths"]
    assert client.get("/v1/health").json() == {"status": "ok"}
    assert client.get("/v1/containers").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert client.get("/v1/containers", headers=wrong).status_code == 401
    assert client.get("/v1/containers", headers=AUTH).json() == []
    assert client.get("/v1/containers/nope/result", headers=AUTH).status_code == 404


@pytest.mark.swtpm
def test_register_attest_and_read_the_result(tmp_path, local_ca, vtpm):
    """A registered container is attested on request and its result can be read."""
    vtpm.measure(files(10))
    client = make_client(tmp_path, local_ca, direct_fetch(vtpm))
    response = client.post("/v1/containers", json=registration(vtpm), headers=AUTH)
    assert response.status_code == 201, response.text
    result = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert result["verdict"] == "trusted" and result["verified_index"] == 11
    assert client.get("/v1/containers/web/result", headers=AUTH).json() == result
    shown = client.get("/v1/containers/web", headers=AUTH).json()
    assert shown["state"]["index"] == 11


def test_a_request_without_the_token_is_refused_before_its_body_is_read(
    tmp_path, local_ca
):
    """No token, a wrong one or another scheme: 401, not the body's 400 or 422.

    (A body over the size limit is refused by its Content-Length first, 413.)
    """
    client = make_client(tmp_path, local_ca, max_body_size=1 << 20)
    url = "/v1/containers/web/evidence"
    nested = b"[" * 3000 + b"]" * 3000
    json_type = {"Content-Type": "application/json"}
    for headers in (
        {},
        {"Authorization": "Bearer not-the-token-at-all"},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        for body in (nested, b"x" * 10_000):
            answer = client.post(url, content=body, headers=headers | json_type)
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"] == "Bearer"
    assert client.post(url, content=nested, headers=AUTH | json_type).status_code == 400


def test_the_gate_holds_under_a_root_path(tmp_path, local_ca):
    """Behind a proxy that mounts the API under a prefix, the gate still applies."""
    trust = TrustStore()
    trust.add_pem(local_ca.root_pem)
    store = VerifierStore(f"sqlite:///{tmp_path / 'verifier.db'}")
    app = create_app(VerifierService(store, trust), TOKEN)
    client = TestClient(app, root_path="/api")
    url = "/api/v1/containers/web/evidence"
    body = b"[" * 3000 + b"]" * 3000
    json_type = {"Content-Type": "application/json"}
    assert client.post(url, content=body, headers=json_type).status_code == 401


@pytest.mark.parametrize(
    "token",
    ["s3cret-token-\u00e9-1234567", "sixteen chars ok", "tab\tinside-a-long-token"],
)
def test_tokens_a_client_cannot_send_are_refused(tmp_path, token):
    """Only RFC 6750 token characters: a header carries nothing else as it is."""
    from cvtpm.errors import ConfigError
    from cvtpm.server._auth import load_token

    path = tmp_path / "token"
    path.write_text(token + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="RFC 6750"):
        load_token(path)
    path.write_text("Abc-._~+/0123456789==\n")
    assert load_token(path) == "Abc-._~+/0123456789=="


def test_a_short_token_is_refused_saying_where_it_came_from(tmp_path, monkeypatch):
    """The error names the file or variable that held too short a token."""
    from cvtpm.errors import ConfigError
    from cvtpm.server._auth import TOKEN_ENV, load_token

    path = tmp_path / "token"
    path.write_text("short\n")
    with pytest.raises(ConfigError, match=f"the token file {path} holds 5 characters$"):
        load_token(path)
    monkeypatch.setenv(TOKEN_ENV, "tiny")
    with pytest.raises(ConfigError, match=f"{TOKEN_ENV} is 4 characters$"):
        load_token()
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match="pass --token-file or set"):
        load_token()


@pytest.mark.swtpm
def test_a_body_over_the_limit_is_refused_unread(tmp_path, local_ca, vtpm):
    """Evidence larger than the limit is 413, and the container's state is kept."""
    client = make_client(tmp_path, local_ca, max_body_size=4096)
    client.post("/v1/containers", json=registration(vtpm), headers=AUTH)
    url = "/v1/containers/web/evidence"
    big = {"padding": "x" * 5000}
    assert client.post(url, json=big, headers=AUTH).status_code == 413

    def chunks():  # no Content-Length: the limit holds while the body streams
        for _ in range(10):
            yield b"x" * 1000

    assert client.post(url, content=chunks(), headers=AUTH).status_code == 413
    assert client.get("/v1/containers/web", headers=AUTH).json()["state"]["index"] == 0


@pytest.mark.swtpm
def test_submitted_evidence_and_a_replayed_submission(tmp_path, local_ca, vtpm):
    """Evidence over an issued nonce is trusted once; sending it again is refused."""
    client = make_client(tmp_path, local_ca)
    client.post("/v1/containers", json=registration(vtpm), headers=AUTH)
    nonce = bytes.fromhex(
        client.post("/v1/containers/web/nonce", headers=AUTH).json()["nonce"]
    )
    with vtpm.client() as tpm:
        evidence = collect_evidence(tpm, vtpm, nonce, vtpm.list_path, 0).to_json()
    url = "/v1/containers/web/evidence"
    assert client.post(url, json=evidence, headers=AUTH).json()["trusted"]
    again = client.post(url, json=evidence, headers=AUTH).json()
    assert [f["reason"] for f in again["failures"]] == ["quote.nonce_reused"]


@pytest.mark.swtpm
def test_unknown_ca_is_refused_at_registration(tmp_path, local_ca, other_ca, swtpm_dir):
    """Registering an EK certificate from an unknown CA is refused with its reason."""
    vtpm = make_vtpm(swtpm_dir, other_ca)
    client = make_client(tmp_path, local_ca)
    response = client.post("/v1/containers", json=registration(vtpm), headers=AUTH)
    assert response.status_code == 422
    reasons = {f["reason"] for f in response.json()["failures"]}
    assert "ek.untrusted_ca" in reasons


@pytest.mark.swtpm
def test_credential_activation_binds_an_ak_without_certificate(
    tmp_path, local_ca, vtpm
):
    """Without an AK certificate the AK is bound by answering a credential challenge."""
    client = make_client(tmp_path, local_ca, direct_fetch(vtpm))
    body = registration(vtpm, ak_cert="")
    challenge = client.post("/v1/containers", json=body, headers=AUTH).json()[
        "challenge"
    ]
    before = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert [f["reason"] for f in before["failures"]] == ["ak.not_bound"]

    blob = base64.b64decode(challenge["credential_blob"])
    secret = base64.b64decode(challenge["encrypted_secret"])
    with vtpm.client() as tpm:
        answer = tpm.activate_credential(vtpm.ak_handle, vtpm.ek_handle, blob, secret)
    wrong = {"secret": base64.b64encode(b"x" * 32).decode()}
    assert not client.post(
        "/v1/containers/web/activate", json=wrong, headers=AUTH
    ).json()["activated"]
    right = {"secret": base64.b64encode(answer).decode()}
    assert client.post("/v1/containers/web/activate", json=right, headers=AUTH).json()[
        "activated"
    ]
    assert client.post("/v1/containers/web/attest", headers=AUTH).json()["trusted"]


@pytest.mark.swtpm
def test_runtime_policy_failure_names_the_entry(tmp_path, local_ca, vtpm):
    """A file the runtime policy does not allow makes the verdict not trusted."""
    allowed = files(3)
    vtpm.measure(allowed + files(1, start=9, prefix="/tmp/evil"))
    policy = {
        "cvtpm_runtime_policy": 1,
        "files": {e.path: [f"sha256:{e.file_digest.hex()}"] for e in allowed},
        "excludes": ["boot_aggregate"],
    }
    client = make_client(tmp_path, local_ca, direct_fetch(vtpm))
    client.post("/v1/containers", json=registration(vtpm, policy=policy), headers=AUTH)
    result = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert not result["trusted"]
    (failure,) = result["failures"]
    assert failure["reason"].startswith("policy.") and failure["index"] == 4
    assert failure["path"] == "/tmp/evil9"


class _Manager:
    """The part of the vTPM manager the evidence endpoint uses, over the test vTPM."""

    def __init__(self, vtpm):
        self.vtpm = vtpm

    def get(self, name):
        return self.vtpm

    def client(self, name):
        return self.vtpm.client()


@contextlib.contextmanager
def serve(app: FastAPI):
    """Run `app` with uvicorn on a free loopback port; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.swtpm
def test_pull_over_http_from_an_evidence_endpoint(tmp_path, local_ca, vtpm):
    """The verifier fetches evidence over HTTP from a daemon using `serve_evidence`."""
    vtpm.measure(files(4))
    daemon = FastAPI()
    manager = _Manager(vtpm)

    @daemon.get("/v1/containers/{name}/evidence")
    def evidence(name: str, nonce: str, since: int = 0) -> dict:
        return serve_evidence(manager, name, nonce, since, lambda _: vtpm.list_path)

    client = make_client(tmp_path, local_ca)
    with serve(daemon) as url:
        body = registration(vtpm, daemon_url=url)
        client.post("/v1/containers", json=body, headers=AUTH)
        first = client.post("/v1/containers/web/attest", headers=AUTH).json()
        vtpm.measure(files(2, start=40))
        second = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert first["trusted"] and first["new_entries"] == 5
    assert second["trusted"] and second["new_entries"] == 2
    assert json.dumps(second)


def allow(entries) -> dict:
    """A cvtpm runtime policy allowing exactly `entries`."""
    return {
        "cvtpm_runtime_policy": 1,
        "files": {e.path: [f"sha256:{e.file_digest.hex()}"] for e in entries},
        "excludes": ["boot_aggregate"],
    }


@pytest.mark.swtpm
def test_a_new_policy_judges_the_whole_list_again(tmp_path, local_ca, vtpm):
    """After PUT policy, every entry is judged by it, from 0, and the event says so."""
    tools = files(4)
    vtpm.measure(tools)
    client = make_client(tmp_path, local_ca, direct_fetch(vtpm))
    client.post("/v1/containers", json=registration(vtpm), headers=AUTH)
    first = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert first["trusted"] and first["verified_index"] == 5

    # tool3 is not in the new policy: it was verified before, and now fails.
    url = "/v1/containers/web/policy"
    assert client.put(url, json=allow(tools[:3]), headers=AUTH).status_code == 204
    second = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert not second["trusted"]
    assert second["start_index"] == 0 and second["new_entries"] == 5
    assert [(f["index"], f["path"]) for f in second["failures"]] == [
        (4, "/usr/bin/tool3")
    ]

    # The same policy again changes nothing; a fixed one is judged from 0 once.
    assert client.put(url, json=allow(tools), headers=AUTH).status_code == 204
    third = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert third["trusted"] and third["start_index"] == 0
    assert client.put(url, json=allow(tools), headers=AUTH).status_code == 204
    fourth = client.post("/v1/containers/web/attest", headers=AUTH).json()
    assert fourth["trusted"] and fourth["start_index"] == 5
    assert "policy.changed" not in fourth["events"]


@pytest.mark.swtpm
def test_registering_again_keeps_state_and_another_ek_is_refused(
    tmp_path, local_ca, vtpm
):
    """The same EK again is an update; another EK under the name is a 409."""
    vtpm.measure(files(3))
    client = make_client(tmp_path, local_ca, direct_fetch(vtpm))
    first = client.post("/v1/containers", json=registration(vtpm), headers=AUTH)
    assert first.status_code == 201
    assert client.post("/v1/containers/web/attest", headers=AUTH).json()["trusted"]
    again = client.post("/v1/containers", json=registration(vtpm), headers=AUTH)
    assert again.status_code == 201
    shown = client.get("/v1/containers/web", headers=AUTH).json()
    assert shown["state"]["index"] == 4

    # An EK certificate from the same CA, for another key.
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_cert = local_ca.issue_ek_certificate(other_key, TpmIdentity(0x1014, "SW", 1))
    other_pem = other_cert.public_bytes(serialization.Encoding.PEM).decode()
    body = registration(vtpm, ek_cert=other_pem)
    refused = client.post("/v1/containers", json=body, headers=AUTH)
    assert refused.status_code == 409
    assert "registered with another EK" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"daemon_url": "localhost:8441"}, "field 'daemon_url'"),
        ({"ak_public": "AAAA"}, "field 'ak_public' is not a TPMT_PUBLIC"),
        ({"banks": ["md5"]}, "field 'banks' has 'md5'"),
    ],
)
def test_bad_registrations_are_400(tmp_path, local_ca, change, message):
    """A registration with an unusable field is refused, naming the field."""
    client = make_client(tmp_path, local_ca)
    body = {"name": "web", "ek_cert": "x", "ak_public": "", **change}
    if "ak_public" not in change:
        from tests.tpm.test_structures import ecc_public

        body["ak_public"] = base64.b64encode(ecc_public().marshal()).decode()
    response = client.post("/v1/containers", json=body, headers=AUTH)
    assert response.status_code == 400 and message in response.json()["detail"]


@pytest.mark.swtpm
def test_an_unreachable_daemon_is_a_verdict_naming_it(tmp_path, local_ca, vtpm):
    """Attesting a container whose daemon is not there is not trusted, and says why."""
    client = make_client(tmp_path, local_ca)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        body = registration(vtpm, daemon_url=url)
        assert client.post("/v1/containers", json=body, headers=AUTH).is_success
        response = client.post("/v1/containers/web/attest", headers=AUTH)
    result = response.json()
    assert response.status_code == 200 and not result["trusted"]
    (failure,) = result["failures"]
    assert failure["reason"] == "evidence.unavailable"
    assert f"cannot reach the daemon at {url}" in failure["message"]
