"""The `cvtpm vtpm` commands: create, list, show, start, stop, delete."""

from __future__ import annotations

import click

from cvtpm.cli.output import emit, json_option
from cvtpm.errors import CvtpmError, NotFoundError, UsageError
from cvtpm.measure.journal import retire_list
from cvtpm.names import check_name
from cvtpm.vtpm.info import VtpmInfo
from cvtpm.vtpm.manager import VtpmManager


@click.group()
def vtpm():
    """Manage the virtual TPMs on this host."""


def _valid_name(_ctx, _param, value: str) -> str:
    try:
        check_name(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


name_argument = click.argument("name", callback=_valid_name)


def _manager(ctx: click.Context, making: bool = False) -> VtpmManager:
    """The host's vTPM manager; only a command `making` a vTPM may begin a
    state directory (a mistyped --state-dir would otherwise make a new one)."""
    if not making and not ctx.obj.state.is_dir():
        raise NotFoundError(
            f"no cvtpm state directory {ctx.obj.state}: no vTPM was made there"
            " (is --state-dir right?)"
        )
    return VtpmManager(ctx.obj)


def _describe(info: VtpmInfo) -> str:
    eks = ", ".join(f"{t} at 0x{h:08x}" for t, h in info.ek_handles.items())
    lines = [
        f"name:      {info.name}",
        f"uuid:      {info.uuid}",
        f"state:     {info.state}" + (f" (pid {info.pid})" if info.pid else ""),
        f"tcti:      {info.tcti}",
        f"banks:     {', '.join(info.banks)}",
        f"EK:        {eks}",
        f"AK:        {info.ak_type} at 0x{info.ak_handle:08x}",
        f"restarts:  {info.restarts}",
    ]
    return "\n".join(lines)


@vtpm.command()
@click.argument("name")
@click.option(
    "--ek",
    type=click.Choice(["ecc", "rsa", "both"]),
    default="ecc",
    show_default=True,
    help="Endorsement key type(s), from the TCG EK credential profile.",
)
@click.option("--banks", help="PCR banks to allocate, e.g. sha1,sha256 (default: all).")
@click.option(
    "--ak", type=click.Choice(["ecc", "rsa"]), default="ecc", show_default=True
)
@click.option("--no-start", is_flag=True, help="Leave it stopped after creation.")
@json_option
@click.pass_context
def create(ctx, name, ek, banks, ak, no_start, as_json):
    """Manufacture a vTPM: EK, EK certificate in NV, and a certified AK."""
    ek_types = ["ecc", "rsa"] if ek == "both" else [ek]
    bank_list = None
    if banks is not None:
        bank_list = [b.strip() for b in banks.split(",")]
        if not all(bank_list):
            raise click.BadParameter(
                f"{banks!r} has an empty bank name; name banks like sha1,sha256",
                param_hint="--banks",
            )
    info = _manager(ctx, making=True).create(
        name, ek_types=ek_types, banks=bank_list, ak_type=ak, start=not no_start
    )
    emit(info.to_dict(), as_json, lambda _: _describe(info))


@vtpm.command(name="list")
@json_option
@click.pass_context
def list_(ctx, as_json):
    """List the vTPMs and their state."""
    manager = _manager(ctx)
    infos = [manager.shown(info) for info in manager.list()]

    def text(_):
        if not infos:
            return "no vTPMs"
        width = max(len("NAME"), *(len(i.name) for i in infos))
        rows = [f"{'NAME':<{width}}  {'STATE':<9} {'PID':>7}  BANKS"]
        for i in infos:
            pid = i.pid or "-"
            rows.append(
                f"{i.name:<{width}}  {i.state:<9} {pid:>7}  {','.join(i.banks)}"
            )
        return "\n".join(rows)

    emit([i.to_dict() for i in infos], as_json, text)


@vtpm.command()
@name_argument
@json_option
@click.pass_context
def show(ctx, name, as_json):
    """Show one vTPM, with its PCR 10 when it is running."""
    manager = _manager(ctx)
    info = manager.shown(manager.get(name))
    data = info.to_dict()
    if info.state == "running":
        try:
            with manager.client(name) as tpm:
                data["pcr10"] = {b: v.hex() for b, v in tpm.pcr_read(10).items()}
        except CvtpmError as exc:
            data["pcr10_error"] = exc.explain()

    def text(_):
        extra = [f"PCR 10 {b}: {v}" for b, v in data.get("pcr10", {}).items()]
        if "pcr10_error" in data:
            extra.append(f"PCR 10:    cannot be read: {data['pcr10_error']}")
        if info.state == "down":
            extra.append(
                "its swtpm died or lost its run directory; "
                f"`cvtpm vtpm start {name}` restarts it"
            )
        return "\n".join([_describe(info), *extra])

    emit(data, as_json, text)


@vtpm.command()
@name_argument
@json_option
@click.pass_context
def start(ctx, name, as_json):
    """Start a stopped vTPM from its saved state."""
    report = _manager(ctx).start(name)
    emit(
        {
            "name": name,
            "pid": report.pid,
            "resumed": report.resumed,
            "lost": report.lost,
            "was_running": report.was_running,
        },
        as_json,
        lambda _: report.describe(),
    )


_force_option = click.option(
    "--force", is_flag=True, help="Even while a running container uses it."
)


@vtpm.command()
@name_argument
@_force_option
@json_option
@click.pass_context
def stop(ctx, name, force, as_json):
    """Orderly stop: TPM2_Shutdown(STATE), then swtpm saves its state."""
    _manager(ctx).stop(name, force=force)
    emit({"name": name, "state": "stopped"}, as_json, lambda _: f"{name}: stopped")


@vtpm.command()
@name_argument
@_force_option
@json_option
@click.pass_context
def delete(ctx, name, force, as_json):
    """Delete a vTPM with its state and keys; this cannot be undone.

    Its measurement list, if any, is kept aside in lists/.retired.
    """
    _manager(ctx).delete(name, force=force)
    retired = retire_list(ctx.obj.lists, name)
    emit(
        {"name": name, "deleted": True, "list_kept_in": retired and str(retired)},
        as_json,
        lambda _: (
            f"{name}: deleted"
            + (f" (its list is kept in {retired})" if retired else "")
        ),
    )


COMMANDS = [vtpm]
