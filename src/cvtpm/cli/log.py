"""The `cvtpm log` command: print a container's measurement list.

Lists live in `Paths.lists / NAME` (see cvtpm.measure.journal for the files).
Without --bank the output is the kernel's classic list (SHA-1 template
digests); with --bank it is the kernel's per-bank list
(`ascii_runtime_measurements_<bank>`), whose template digests are that bank's.
"""

from __future__ import annotations

import sys

import click

from cvtpm.cli.output import emit, json_option
from cvtpm.errors import NotFoundError
from cvtpm.ima.ascii import format_ascii
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import BANK_SIZES, Entry
from cvtpm.measure.journal import BINARY_NAME, read_list


@click.command("log")
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ascii", "binary"]),
    default="ascii",
    show_default=True,
    help="The kernel's ascii or binary list format.",
)
@click.option(
    "--bank",
    type=click.Choice(sorted(BANK_SIZES)),
    help="Template digests of this PCR bank (the kernel's per-bank list).",
)
@json_option
@click.pass_context
def log(ctx, name, fmt, bank, as_json):
    """Print the measurement list of container NAME."""
    directory = ctx.obj.lists / name
    if not (directory / BINARY_NAME).exists():
        raise NotFoundError(
            f"no measurement list for container {name!r} in {directory}"
        )
    entries = read_list(directory)
    if bank is not None:
        entries = [entry.for_bank(bank) for entry in entries]

    if as_json:
        emit([_to_dict(entry) for entry in entries], True)
    elif fmt == "binary":
        sys.stdout.buffer.write(b"".join(encode_binary(entry) for entry in entries))
        sys.stdout.buffer.flush()
    else:
        click.echo("".join(format_ascii(entry) for entry in entries), nl=False)


def _to_dict(entry: Entry) -> dict:
    return {
        "pcr": entry.pcr,
        "template_digest": entry.template_digest.hex(),
        "template_name": entry.template_name,
        "digest_alg": entry.digest_alg,
        "file_digest": entry.file_digest.hex(),
        "path": entry.path,
        "violation": entry.is_violation,
    }


COMMANDS = [log]
