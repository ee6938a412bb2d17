"""The `cvtpm run` command: a command in a rootfs, under runc, with its own vTPM."""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from cvtpm.cli.binds import bind_options, parse_binds
from cvtpm.errors import ConfigError, ParseError, UsageError
from cvtpm.files import read_regular_file
from cvtpm.ima.policy import parse_policy
from cvtpm.names import check_name
from cvtpm.runtime import runner
from cvtpm.runtime.bundle import RunSpec, oci_config
from cvtpm.runtime.expose import resolve_expose
from cvtpm.runtime.hook import refuse_exposed_state


def _check_policy(path: Path) -> str:
    """The IMA policy's text, parsed here so that a mistake is named at once."""
    try:
        text = read_regular_file(path, "--policy").decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--policy {path}: not a text file") from None
    except ConfigError as exc:
        raise UsageError(exc.explain()) from None
    if not text.strip():
        raise UsageError(
            f"--policy {path}: the file is empty (a policy of only comments"
            " measures nothing; leave --policy out for the default)"
        )
    try:
        parse_policy(text)
    except ParseError as exc:
        raise UsageError(f"--policy {path}: {exc}") from None
    return text


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--name", help="The container's (and its vTPM's) name.")
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="IMA policy for the container's measurements.",
)
@click.option("--ephemeral", is_flag=True, help="Delete the vTPM when it stops.")
@click.option("--parent", help="The enclosing container, for nested measurement.")
@click.option(
    "--expose",
    type=click.Choice(["auto", "socket", "device"]),
    default="auto",
    show_default=True,
    help="Filtered socket at /run/tpm, or /dev/tpm0 via vtpm-proxy.",
)
@bind_options(
    "Bind-mount a host path read-only into the container (repeatable).",
    "Lend the host's tpm2-tools read-only: `tpm2 pcrread` works inside.",
)
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE")
@click.argument("rootfs", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("command", nargs=-1, required=True)
@click.pass_obj
def run(
    paths,
    name,
    policy,
    ephemeral,
    parent,
    expose,
    binds,
    tpm2_tools,
    env,
    rootfs,
    command,
):
    """Run COMMAND in ROOTFS under runc, with its own vTPM and measurement list.

    Put `--` before COMMAND when it has options of its own. The exit status is the
    container's.
    """
    environment = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key or any(c in item for c in "\0\n"):
            raise UsageError(f"--env {item!r}: expected KEY=VALUE on one line")
        environment[key] = value
    if policy is not None:
        _check_policy(policy)

    if name is not None:
        check_name(name)
    if parent is not None:
        check_name(parent)
    spec = RunSpec(
        rootfs=rootfs.absolute(),
        args=list(command),
        name=name or f"cvtpm-{secrets.token_hex(6)}",
        ephemeral=ephemeral,
        policy=policy.absolute() if policy else None,
        parent=parent,
        expose=resolve_expose(expose),
        binds=parse_binds(binds, tpm2_tools),
        env=environment,
    )
    # The daemon refuses these too, but from inside runc's hook error.
    refuse_exposed_state(oci_config(spec, paths), Path("/"), spec.rootfs, paths)
    status = runner.run(spec, paths)
    # SystemExit, not click's Exit: main() runs click with standalone_mode=False,
    # where click turns Exit into a return value that main() does not pass on.
    raise SystemExit(status)


COMMANDS = [run]
