"""The `cvtpm attest` command: attest one container now and say if it is trusted."""

from __future__ import annotations

import os

import click

from cvtpm.attest.evidence import Evidence, collect_evidence
from cvtpm.attest.fetch import check_daemon_url, daemon_fetcher
from cvtpm.attest.result import explain
from cvtpm.attest.service import VerifierService
from cvtpm.attest.trust import TrustStore
from cvtpm.attest.verifier import Registration
from cvtpm.cli.output import emit, json_option
from cvtpm.config import Paths
from cvtpm.errors import (
    ConfigError,
    CvtpmError,
    NotFoundError,
    ParseError,
    StateError,
    UsageError,
)
from cvtpm.files import read_regular_file
from cvtpm.names import check_name
from cvtpm.store import VerifierStore

BINARY_LIST = "binary_runtime_measurements"


def _checked_name(name: str) -> str:
    try:
        check_name(name)
    except UsageError as exc:
        raise click.BadParameter(exc.explain(), param_hint="NAME") from None
    return name


class NotTrusted(CvtpmError):
    """The container's attestation failed; the failures were printed."""


def local_trust(paths: Paths, extra: tuple[str, ...] = ()) -> TrustStore:
    """The trust store: the given PEM files or directories, else the local CA's root."""
    if extra:
        return TrustStore.from_paths(list(extra))
    root = paths.ca / "root.pem"
    if not root.exists():
        raise ConfigError(f"no local CA at {paths.ca}; pass --trust with a root")
    return TrustStore.from_paths([root])


def default_store_url(paths: Paths) -> str:
    """The local verifier's database: SQLite under the state directory."""
    return f"sqlite:///{paths.state / 'verifier.db'}"


def _local_fetch(paths: Paths):
    """Evidence straight from this host's vTPM and list, without the daemon."""
    from cvtpm.vtpm.manager import VtpmManager

    manager = VtpmManager(paths)

    def fetch(reg: Registration, nonce: bytes, since: int) -> Evidence:
        info = manager.shown(manager.get(reg.name))
        if info.state != "running":
            raise StateError(
                f"the vTPM of {reg.name!r} is {info.state}: start it with"
                f" `cvtpm vtpm start {reg.name}` (or run its container) to attest it"
            )
        list_path = paths.lists / reg.name / BINARY_LIST
        with manager.client(reg.name) as tpm:
            return collect_evidence(tpm, info, nonce, list_path, since)

    return fetch


def _ensure_registered(service: VerifierService, name: str, daemon_url: str) -> None:
    """Register `name` from its own evidence unless its EK and AK are known already.

    The EK certificate still has to chain to the trust store, so learning the
    keys from the evidence trusts nothing the verifier would not check anyway.
    """
    probe = service.fetch(
        Registration(name, "", b"", daemon_url=daemon_url), os.urandom(20), 0
    )
    wanted = Registration.from_evidence(probe, daemon_url)
    try:
        known = service.store.registration(name)
    except NotFoundError:
        known = None
    if known is not None and (known.ek_cert_pem, known.ak_public) == (
        wanted.ek_cert_pem,
        wanted.ak_public,
    ):
        return
    if known is not None and not known.same_ek(wanted):
        # This host's own vTPM of that name was made anew (an ephemeral
        # container run again): the old registration describes a TPM that
        # is gone. A remote verifier refuses this instead (409).
        click.echo(
            f"note: the vTPM of {name} has a new EK; its old registration is replaced",
            err=True,
        )
        service.store.delete(name)
    outcome = service.register(wanted)
    if not outcome.accepted:
        reasons = ", ".join(f"{f.reason}: {f.message}" for f in outcome.failures)
        raise NotTrusted(f"{name} cannot be registered: {reasons}")


def _read_policy(path: str) -> str:
    try:
        return read_regular_file(path, "the runtime policy").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"runtime policy {path}: not UTF-8 text (byte {exc.start})"
        ) from None


@click.command()
@click.argument("name", callback=lambda _ctx, _param, value: _checked_name(value))
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, exists=True),
    help="Runtime policy JSON (cvtpm or Keylime).",
)
@click.option(
    "--daemon",
    "daemon_url",
    envvar="CVTPM_DAEMON_URL",
    help="Fetch evidence from this daemon URL instead of the local vTPM.",
)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True),
    help="Trusted CA PEM file or directory (default: the local CA root).",
)
@click.option(
    "--db",
    "db_url",
    help="Verifier database URL (default: SQLite in the state directory).",
)
@json_option
@click.pass_context
def attest(ctx, name, policy, daemon_url, trust, db_url, as_json):
    """Attest container NAME: exit 0 if trusted, 1 if not."""
    paths: Paths = ctx.obj
    if daemon_url:
        try:
            daemon_url = check_daemon_url(daemon_url)
        except ParseError as exc:
            raise click.BadParameter(str(exc), param_hint="--daemon") from None
    # The daemon asked is the one named here, whatever URL was registered.
    fetch = daemon_fetcher(daemon_url) if daemon_url else _local_fetch(paths)
    store = VerifierStore(db_url or default_store_url(paths))
    service = VerifierService(store, local_trust(paths, trust), fetch=fetch)
    try:
        _ensure_registered(service, name, daemon_url or "")
        # The policy of this run only: without --policy no file is judged.
        service.set_policy(name, None if policy is None else _read_policy(policy))
        result = service.attest(name)
    finally:
        store.close()

    emit(result.to_dict(), as_json, lambda _: explain(result))
    if not result.trusted:
        count = len(result.failures)
        raise NotTrusted(
            f"{name} is not trusted ({count} failure{'' if count == 1 else 's'})"
        )


COMMANDS = [attest]
