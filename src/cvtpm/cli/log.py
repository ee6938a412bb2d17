"""The `cvtpm log` command: print a container's measurement list.

Lists live in `Paths.lists / NAME` (see cvtpm.measure.journal for the files).
Without --bank the output is the kernel's classic list (SHA-1 template
digests); with --bank it is the kernel's per-bank list
(`ascii_runtime_measurements_<bank>`), whose template digests are that bank's.
Names are printed as the kernel prints them: raw bytes, UTF-8 or not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cvtpm.cli.output import emit
from cvtpm.errors import NotFoundError, StateError
from cvtpm.ima.ascii import encode_ascii
from cvtpm.ima.binary import encode_binary
from cvtpm.ima.entry import BANK_SIZES, Entry
from cvtpm.measure.journal import BINARY_NAME, Scan, scan_list
from cvtpm.names import check_name

JSON_HELP = (
    "Print JSON: one object per entry. `path` is text, with U+FFFD for bytes "
    "that are not UTF-8; such names also carry `path_hex`, their exact bytes."
)


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
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def log(ctx, name, fmt, bank, as_json):
    """Print the measurement list of container NAME."""
    # 1. The list: NAME becomes a path, so it is checked first.
    check_name(name)
    directory = ctx.obj.lists / name

    # 2. Its entries; a torn tail (a crash mid-append) is left out, with a word.
    scan = _scan(directory, name)
    if scan.torn:
        click.echo(
            f"cvtpm: warning: {directory / BINARY_NAME} ends in {scan.torn} torn "
            f"bytes at offset {scan.size}, left by a crash mid-append; they are "
            "not shown, and the agent sets them aside once the vTPM's PCR "
            "confirms they were never extended",
            err=True,
        )
    entries = scan.entries
    if bank is not None:
        entries = [entry.for_bank(bank) for entry in entries]

    # 3. Printed as bytes: names need not be UTF-8.
    if as_json:
        emit([_to_dict(entry) for entry in entries], True)
        return
    encode = encode_binary if fmt == "binary" else encode_ascii
    out = sys.stdout.buffer
    out.write(b"".join(encode(entry) for entry in entries))
    out.flush()


def _scan(directory: Path, name: str) -> Scan:
    try:
        if not (directory / BINARY_NAME).is_file():
            raise NotFoundError(
                f"no measurement list for {name!r}: no container of that name has "
                f"been measured on this host (looked in {directory})"
            )
        return scan_list(directory)
    except OSError as exc:
        raise StateError(f"cannot read {directory}: {exc.strerror}") from exc


def _to_dict(entry: Entry) -> dict:
    raw = entry.path_bytes
    data = {
        "pcr": entry.pcr,
        "template_digest": entry.template_digest.hex(),
        "template_name": entry.template_name,
        "digest_alg": entry.digest_alg,
        "file_digest": entry.file_digest.hex(),
        "path": raw.decode("utf-8", "replace"),
        "violation": entry.is_violation,
    }
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        data["path_hex"] = raw.hex()
    return data


COMMANDS = [log]
