"""Printing results as text for people or as JSON for programs (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def emit(data: Any, as_json: bool, text: Callable[[Any], str] | None = None) -> None:
    """Print `data` as JSON, or as `text(data)` when the user wants prose."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text(data))
    else:
        click.echo(data)
