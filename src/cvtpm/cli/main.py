"""The `cvtpm` command: subcommands, exit codes and error reporting."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from cvtpm import __version__
from cvtpm.config import Paths
from cvtpm.errors import CvtpmError

USAGE_ERROR = 2

# Each command's module and one-line help. Modules are imported only when their
# command runs: the OCI hook runs at every container start, and must not pay
# for the verifier's web framework or the registry's ORM.
_COMMANDS = {
    "vtpm": ("vtpm", "Manage the virtual TPMs on this host."),
    "run": ("run", "Run a container with runc, with a vTPM and measurement."),
    "log": ("log", "Print a container's measurement list."),
    "attest": ("attest", "Attest a container: quote, list and policy."),
    "policy": ("policy", "Create runtime policies (allowlists)."),
    "daemon": ("daemon", "Run the host daemon (vTPMs, measurement, evidence)."),
    "verifier": ("verifier", "Run the attestation verifier service."),
    "hook": ("hook", "The OCI hook entry point, for runc and podman."),
    "install-hooks": ("hook", "Install cvtpm's podman hook and CDI files."),
    "demo": ("demo", "The main job, end to end, on a busybox container."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module = importlib.import_module(f"cvtpm.cli.{_COMMANDS[name][0]}")
        return next((c for c in module.COMMANDS if c.name == name), None)

    def format_commands(self, ctx: click.Context, formatter) -> None:
        # `cvtpm --help` lists the commands from the table, importing none.
        with formatter.section("Commands"):
            formatter.write_dl(
                [(name, text) for name, (_, text) in sorted(_COMMANDS.items())]
            )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cvtpm")
@click.option("-v", "--verbose", count=True, help="-v for info, -vv for debug logs.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="CVTPM_STATE_DIR",
    help="Persistent state (default /var/lib/cvtpm).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    envvar="CVTPM_RUN_DIR",
    help="Sockets and pid files (default /run/cvtpm).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, state_dir: str | None, run_dir: str | None):
    """A virtual TPM and a measurement list for every container."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    defaults = Paths.from_env()
    ctx.obj = Paths(
        # Absolute, as every path cvtpm prints or hands to swtpm and runc.
        state=(defaults.state if state_dir is None else Path(state_dir)).absolute(),
        run=(defaults.run if run_dir is None else Path(run_dir)).absolute(),
    )


# click 8.2 shows a group's help for it alone through this UsageError.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: 0 ok, 1 failure or no, 2 usage."""
    try:
        # Without standalone mode, click returns what `ctx.exit(n)` asked for.
        code = cli.main(args=argv, prog_name="cvtpm", standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except _NO_ARGS_IS_HELP as exc:
        exc.show()  # a group called alone: its help, as a usage error
        return USAGE_ERROR
    except click.ClickException as exc:
        # One line, like every other error (click's own form takes three).
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see `{exc.ctx.command_path} --help`)"
        click.echo(f"cvtpm: error: {exc.format_message()}{hint}", err=True)
        return USAGE_ERROR if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except CvtpmError as exc:
        click.echo(f"cvtpm: error: {exc.explain()}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `cvtpm log x | head`); that is not an error.
        sys.stderr.close()
        return 0
    except OSError as exc:
        # The host said no (a full disk, a file that cannot be written): not
        # a bug of cvtpm, so one line, with the traceback only under -vv.
        logging.getLogger("cvtpm").debug("operating system error", exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"cvtpm: error: {exc.strerror or exc}{where}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug, not bad input (bad input raises CvtpmError): one line for the
        # user, the traceback for whoever runs it again with -vv.
        logging.getLogger("cvtpm").debug("internal error", exc_info=True)
        click.echo(
            f"cvtpm: internal error: {type(exc).__name__}: {exc} "
            "(run with -vv for details, and please report it)",
            err=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
