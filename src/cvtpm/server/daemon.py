"""The daemon's HTTP API: container set-up for hooks, evidence for verifiers.

Handlers only route to cvtpm.server.host.Host. The full API is served on a
root-only unix socket; `--listen` adds a TCP port that serves evidence only.
"""

from __future__ import annotations

import os
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cvtpm import __version__
from cvtpm.errors import CvtpmError, NotFoundError, ParseError, UsageError
from cvtpm.runtime.hook_main import STATE_DIR_HEADER
from cvtpm.server.hooks import run_hook
from cvtpm.server.host import Host
from cvtpm.server.request import ContainerRequest


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

    @app.post("/v1/hooks/{stage}")
    async def hook(stage: str, request: Request) -> dict:
        """Run an OCI hook stage on the container state in the body (cvtpm-hook)."""
        body = await request.body()
        header = request.headers.get(STATE_DIR_HEADER)
        state_dir = None if header is None else os.fsdecode(unquote_to_bytes(header))
        # The stage blocks (vTPM start, TPM commands, mounts): off the event loop.
        return await run_in_threadpool(run_hook, host, stage, body, state_dir)

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
        """Whether the daemon is up, what it serves, and how full its pool is."""
        return {
            "version": __version__,
            "containers": len(host.containers()),
            "pool": {"size": host.pool.size, "ready": host.manager.pooled_count()},
        }

    _add_evidence_route(app, host)
    return app


def evidence_app(host: Host) -> FastAPI:
    """Evidence only, for a TCP port a remote verifier reaches."""
    app = FastAPI(title="cvtpm evidence", version=__version__)
    _install_errors(app)
    _add_evidence_route(app, host)
    return app
