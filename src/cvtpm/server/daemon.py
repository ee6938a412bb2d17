"""The daemon's HTTP API: container set-up for hooks, evidence for verifiers.

Handlers only route to cvtpm.server.host.Host. The full API is served on a
root-only unix socket; `--listen` adds a TCP port that serves evidence only.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from cvtpm import __version__
from cvtpm.errors import CvtpmError, NotFoundError, ParseError, UsageError
from cvtpm.server.host import ContainerRequest, Host


def _error_status(exc: CvtpmError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, UsageError | ParseError):
        return 400
    return 409


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(CvtpmError)
    async def cvtpm_error(_request: Request, exc: CvtpmError):
        return JSONResponse(
            status_code=_error_status(exc),
            content={"error": type(exc).__name__, "detail": exc.explain()},
        )


def _add_evidence_route(app: FastAPI, host: Host) -> None:
    @app.get("/v1/containers/{name}/evidence")
    def evidence(
        name: str,
        nonce: str = Query(description="The verifier's nonce, hex"),
        since: int = Query(0, ge=0, description="First list entry to return"),
    ) -> dict:
        """A quote of the container's PCR 10 with the nonce, its list, and certs."""
        try:
            raw = bytes.fromhex(nonce)
        except ValueError as exc:
            raise HTTPException(400, "nonce must be hex") from exc
        return host.evidence(name, raw, since)


def control_app(host: Host) -> FastAPI:
    """The full API, for the unix socket: hooks and local tools."""
    app = FastAPI(title="cvtpm daemon", version=__version__)
    _install_errors(app)

    @app.post("/v1/containers")
    def add_container(container: ContainerRequest) -> dict:
        """Set up a container's vTPM, measurement and TPM socket."""
        return host.add_container(container)

    @app.delete("/v1/containers/{name}")
    def remove_container(name: str) -> dict:
        """Tear a stopped container down; its vTPM is kept unless ephemeral."""
        return host.remove_container(name)

    @app.get("/v1/containers")
    def containers() -> list[dict]:
        """The containers set up now."""
        return host.containers()

    @app.get("/v1/health")
    def health() -> dict:
        """Whether the daemon is up, and what it serves."""
        return {"version": __version__, "containers": len(host.containers())}

    _add_evidence_route(app, host)
    return app


def evidence_app(host: Host) -> FastAPI:
    """Evidence only, for a TCP port a remote verifier reaches."""
    app = FastAPI(title="cvtpm evidence", version=__version__)
    _install_errors(app)
    _add_evidence_route(app, host)
    return app
