"""The `cvtpm policy` commands: make runtime policies."""

from __future__ import annotations

from pathlib import Path

import click

from cvtpm.attest.policy import create_policy, dump


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
    "--alg", default="sha256", show_default=True, help="File digest algorithm."
)
@click.option(
    "--all-files",
    is_flag=True,
    help="Hash every regular file, not only executables and libraries.",
)
def create(rootfs, output, alg, all_files):
    """Allow every executable and library under ROOTFS with its digest (cvtpm JSON)."""
    text = dump(create_policy(Path(rootfs), alg, all_files=all_files))
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


COMMANDS = [policy]
