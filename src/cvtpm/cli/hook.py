"""The `cvtpm hook` OCI hook entry point and `cvtpm install-hooks`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cvtpm.cli.output import emit, json_option
from cvtpm.errors import CvtpmError
from cvtpm.runtime import hook_main
from cvtpm.runtime import install as installer


@click.command()
@click.argument("stage", type=click.Choice(sorted(hook_main.STAGE_NAMES)))
@json_option
@click.pass_obj
def hook(paths, stage, as_json):
    """Run the OCI hook for STAGE, reading the container's state on stdin.

    Containers annotated io.cvtpm.vtpm=enabled get a vTPM at createRuntime and
    give it back at poststop; other containers pass through untouched. The
    daemon does the work; this is `cvtpm-hook` with the CLI's options.
    """
    state = sys.stdin.buffer.read(hook_main.MAX_STATE_SIZE + 1)
    try:
        answer = hook_main.run(
            state, stage, run_dir=str(paths.run), state_dir=str(paths.state)
        )
    except hook_main.HookError as exc:
        raise CvtpmError(str(exc)) from None
    if as_json:
        emit(json.loads(answer), as_json)


@click.command("install-hooks")
@click.option(
    "--hooks-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=installer.DEFAULT_HOOKS_DIR,
    show_default=True,
    help="Where podman reads OCI hook files.",
)
@click.option(
    "--cdi-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=installer.DEFAULT_CDI_DIR,
    show_default=True,
    help="Where podman reads CDI specs.",
)
@click.option("--no-cdi", is_flag=True, help="Do not write the CDI spec.")
@click.option(
    "--python",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help=(
        "Run the hook as a Python script with this interpreter (default: the"
        " compiled hook, which starts in a tenth of the time)."
    ),
)
@click.option(
    "--print-runc",
    is_flag=True,
    help="Only print the config.json `hooks` fragment for runc.",
)
@json_option
@click.pass_obj
def install_hooks(paths, hooks_dir, cdi_dir, no_cdi, python, print_runc, as_json):
    """Install the podman hooks.d file (and CDI spec) that runs cvtpm's hook."""
    if print_runc:
        click.echo(json.dumps({"hooks": installer.runc_hooks(paths, python)}, indent=2))
        return

    written = installer.install(paths, hooks_dir, None if no_cdi else cdi_dir, python)
    emit(
        {"written": [str(p) for p in written]},
        as_json,
        lambda data: "\n".join(f"wrote {p}" for p in data["written"]),
    )


COMMANDS = [hook, install_hooks]
