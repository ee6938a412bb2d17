"""The `cvtpm verifier` commands: run the remote verifier service."""

from __future__ import annotations

import click

from cvtpm.cli.attest import default_store_url, local_trust


@click.group()
def verifier():
    """The remote verifier: registers containers and attests them."""


@verifier.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
)
@click.option("--port", default=8880, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--db",
    "db_url",
    help="sqlite:///... or postgresql://... (default: SQLite in the state dir).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    help="File holding the bearer token (else CVTPM_VERIFIER_TOKEN).",
)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True),
    help="Trusted CA PEM file or directory (default: the local CA root).",
)
@click.pass_context
def serve(ctx, host, port, db_url, token_file, trust):
    """Serve the verifier's HTTP API (OpenAPI at /docs and /openapi.json)."""
    import uvicorn

    from cvtpm.attest.service import VerifierService
    from cvtpm.server._auth import load_token
    from cvtpm.server.listen import bind_tcp
    from cvtpm.server.verifier import create_app
    from cvtpm.store import VerifierStore

    token = load_token(token_file)
    listening = bind_tcp(host, port)
    store = VerifierStore(db_url or default_store_url(ctx.obj))
    app = create_app(VerifierService(store, local_trust(ctx.obj, trust)), token)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[listening])
    finally:
        store.close()
        listening.close()


COMMANDS = [verifier]
