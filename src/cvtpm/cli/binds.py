"""--bind HOST[:INSIDE] and --tpm2-tools, shared by `cvtpm run` and `cvtpm policy`."""

from __future__ import annotations

from pathlib import Path

import click

from cvtpm.errors import UsageError
from cvtpm.runtime.rootfs import tpm2_tools_binds


def bind_options(bind_help: str, tools_help: str):
    """The two options, with the command's own words for what they do."""

    def decorate(command):
        command = click.option("--tpm2-tools", is_flag=True, help=tools_help)(command)
        return click.option(
            "--bind", "binds", multiple=True, metavar="HOST[:INSIDE]", help=bind_help
        )(command)

    return decorate


def parse_binds(values, tpm2_tools: bool) -> list[tuple[Path, Path]]:
    """(host path, path inside) of each --bind, then of --tpm2-tools' files."""
    return [_bind(value) for value in values] + (
        tpm2_tools_binds() if tpm2_tools else []
    )


def _bind(value: str) -> tuple[Path, Path]:
    host, _, inside = value.partition(":")
    host_path = Path(host)
    inside_path = Path(inside or host)
    if not host_path.is_absolute() or not inside_path.is_absolute():
        raise UsageError(f"--bind {value}: both paths must be absolute")
    if not host_path.exists():
        raise UsageError(f"--bind {value}: {host_path} does not exist")
    return host_path, inside_path
