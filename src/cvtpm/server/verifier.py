"""The verifier's HTTP API: routes only; the work is cvtpm.attest.service's."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cvtpm import __version__
from cvtpm.attest.evidence import Evidence
from cvtpm.attest.service import VerifierService, registration_from_json
from cvtpm.errors import CvtpmError, NotFoundError, ParseError
from cvtpm.server._auth import BearerGate, bearer_auth
from cvtpm.store import StoreError


class RegistrationIn(BaseModel):
    """A container's vTPM, as its host's daemon or an operator presents it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    ek_cert: str = Field(description="EK certificate, PEM")
    ak_public: str = Field(description="AK public area: marshaled TPMT_PUBLIC, base64")
    ak_cert: str = Field("", description="AK certificate from the cvtpm CA, PEM")
    ca_chain: str = Field("", description="intermediate certificates, PEM")
    banks: list[str] = Field(["sha256"], description="PCR banks the quote must cover")
    daemon_url: str = Field("", description="where to GET evidence from")
    policy: dict[str, Any] | None = Field(None, description="runtime policy JSON")


class FailureOut(BaseModel):
    """One failed check."""

    reason: str
    message: str
    index: int | None = None
    path: str | None = None
    digest: str | None = None


class RegistrationOut(BaseModel):
    """Whether a registration was accepted, and a credential challenge if one is due."""

    name: str
    accepted: bool
    failures: list[FailureOut]
    challenge: dict[str, str] | None = None


class ActivationIn(BaseModel):
    """The secret TPM2_ActivateCredential recovered, base64."""

    secret: str


class NonceOut(BaseModel):
    """A nonce to quote over, hex."""

    nonce: str


class ResultOut(BaseModel):
    """The verdict of one attestation."""

    container: str
    verdict: str
    trusted: bool
    failures: list[FailureOut]
    events: list[str]
    start_index: int
    verified_index: int
    pending: int
    new_entries: int
    time: float


# The largest request the verifier reads. Evidence is the biggest: a binary
# list of a million ima-ng entries is about 100 MB, base64 in JSON a third
# more; lists that long are rare, so the default leaves room for 500,000.
MAX_BODY_SIZE = 64 << 20
# Every route under it needs the token.
CONTAINERS = "/v1/containers"


def create_app(
    service: VerifierService, token: str, max_body_size: int = MAX_BODY_SIZE
) -> FastAPI:
    """The verifier's FastAPI application over `service`, guarded by `token`.

    A request body over `max_body_size` bytes is refused (413) while it is
    read, before any of it is parsed: evidence comes from the network.
    """
    app = FastAPI(
        title="cvtpm verifier",
        version=__version__,
        description="Registers containers' vTPMs and attests them incrementally.",
        max_body_size=max_body_size,
    )
    app.state.service = service
    app.add_exception_handler(CvtpmError, _error_response)

    @app.get("/v1/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the service answers (no token needed)."""
        return {"status": "ok"}

    app.include_router(_routes(service), dependencies=[Depends(bearer_auth(token))])
    app.add_middleware(BearerGate, token=token, prefix=CONTAINERS)
    return app


def _routes(service: VerifierService) -> APIRouter:
    router = APIRouter(prefix=CONTAINERS, tags=["containers"])

    @router.post("", response_model=RegistrationOut, status_code=201)
    def register(body: RegistrationIn) -> Any:
        """Register a container's vTPM (EK certificate, AK, daemon URL, policy)."""
        data = body.model_dump()
        policy = data.pop("policy")
        policy_text = None if policy is None else _json(policy)
        outcome = service.register(registration_from_json(data), policy_text)
        code = status.HTTP_201_CREATED if outcome.accepted else 422
        return JSONResponse(outcome.to_dict(), status_code=code)

    @router.get("")
    def names() -> list[str]:
        """The names of all registered containers."""
        return service.store.names()

    @router.get("/{name}")
    def show(name: str) -> dict[str, Any]:
        """A registration's fingerprints and where replay stands."""
        summary = service.store.registration(name).summary()
        return {**summary, "state": service.store.state(name).to_dict()}

    @router.delete("/{name}", status_code=204)
    def remove(name: str) -> None:
        """Forget a container."""
        service.store.delete(name)

    @router.put("/{name}/policy", status_code=204)
    def set_policy(name: str, policy: dict[str, Any]) -> None:
        """Replace a container's runtime policy (cvtpm or Keylime JSON)."""
        service.set_policy(name, _json(policy))

    @router.post("/{name}/activate")
    def activate(name: str, body: ActivationIn) -> dict[str, bool]:
        """Answer the credential challenge; true if the AK is now bound to the EK."""
        return {"activated": service.activate(name, _unbase64(body.secret))}

    @router.post("/{name}/nonce", response_model=NonceOut)
    def nonce(name: str) -> Any:
        """A fresh nonce, for evidence to be submitted later."""
        return {"nonce": service.new_nonce(name).hex()}

    @router.post("/{name}/evidence", response_model=ResultOut)
    def submit(name: str, evidence: dict[str, Any]) -> Any:
        """Verify evidence over a nonce this verifier issued."""
        return service.submit(name, Evidence.from_json(evidence)).to_dict()

    @router.post("/{name}/attest", response_model=ResultOut)
    def attest(name: str) -> Any:
        """Fetch evidence from the container's daemon now and verify it."""
        return service.attest(name).to_dict()

    @router.get("/{name}/result", response_model=ResultOut)
    def latest(name: str) -> Any:
        """The newest result."""
        result = service.latest(name)
        if result is None:
            raise NotFoundError(f"container {name!r} has not been attested yet")
        return result.to_dict()

    return router


def _json(data: Any) -> str:
    import json

    return json.dumps(data, sort_keys=True)


def _unbase64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ParseError("secret: not base64") from None


async def _error_response(_request: Request, exc: Exception) -> JSONResponse:
    """Domain errors as JSON: 404 unknown name, 400 bad input, 503 database
    unreachable, else 409 (a conflict with stored state)."""
    if isinstance(exc, NotFoundError):
        code = 404
    elif isinstance(exc, ParseError):
        code = 400
    elif isinstance(exc, StoreError):
        code = 503
    else:
        code = 409
    message = exc.explain() if isinstance(exc, CvtpmError) else str(exc)
    return JSONResponse({"detail": message}, status_code=code)
