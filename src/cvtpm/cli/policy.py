"""The `cvtpm policy` commands: make runtime policies."""

from __future__ import annotations

from pathlib import Path

import click

from cvtpm.attest.policy import Digest, create_policy, dump
from cvtpm.cli.binds import bind_options, parse_binds
from cvtpm.errors import ConfigError, UsageError
from cvtpm.files import write_regular_file
from cvtpm.ima import entry as ima_entry
from cvtpm.measure.hostpcrs import default_host_pcrs


@click.group()
def policy():
    """Runtime policies: what a container may run."""


@policy.command()
@click.argument("rootfs", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write here instead of stdout.",
)
@click.option(
    "--alg",
    type=click.Choice(["sha1", "sha256", "sha384", "sha512"]),
    default="sha256",
    show_default=True,
    help="File digest algorithm: the one the containers' lists log (sha256).",
)
@click.option(
    "--all-files",
    is_flag=True,
    help="Hash every regular file, not only executables and libraries.",
)
@bind_options(
    "Allow the files of a host path bound at INSIDE too, as `cvtpm run --bind`"
    " binds it (repeatable).",
    "Allow the host's tpm2-tools too, as `cvtpm run --tpm2-tools` lends them.",
)
@click.option(
    "--boot-aggregate/--no-boot-aggregate",
    default=True,
    show_default=True,
    help="Allow the boot_aggregate that containers on this host log first.",
)
def create(rootfs, output, alg, all_files, binds, tpm2_tools, boot_aggregate):
    """Allow every executable and library under ROOTFS with its digest (cvtpm JSON).

    A file a container runs from a bind mount is measured like one of its
    rootfs: name the same --bind and --tpm2-tools as for `cvtpm run`.
    """
    bound = parse_binds(binds, tpm2_tools)
    for host, _ in bound:
        if not (host.is_dir() or host.is_file()):
            click.echo(f"warning: --bind {host} is no file or directory", err=True)
    try:
        policy = create_policy(Path(rootfs), alg, all_files=all_files, binds=bound)
    except ValueError as exc:
        raise UsageError(f"--alg {alg}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read {exc.filename or rootfs}: {exc.strerror}"
        ) from None

    if boot_aggregate:
        # The first entry of every container list on this host: derived from
        # the host TPM's PCRs 0-9, or all zeros on a host without a TPM.
        entry = ima_entry.boot_aggregate(default_host_pcrs())
        policy = policy.allow(entry.path, Digest(entry.digest_alg, entry.file_digest))

    if not policy.digests or list(policy.digests) == ["boot_aggregate"]:
        click.echo(f"warning: no executable or library found under {rootfs}", err=True)

    text = dump(policy)
    if output:
        write_regular_file(output, text.encode(), "the policy")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


COMMANDS = [policy]
