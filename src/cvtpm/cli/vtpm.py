"""The `cvtpm vtpm` command."""

from __future__ import annotations

# TODO: not built yet; its subcommands are added by the component that owns them.
COMMANDS: list = []
