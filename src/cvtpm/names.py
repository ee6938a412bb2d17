"""Names of vTPMs and containers: they become file and socket names, so checked once."""

from __future__ import annotations

import re

from cvtpm.errors import UsageError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str) -> None:
    """Raise UsageError unless `name` is a valid vTPM (and container) name."""
    if not _NAME.match(name):
        raise UsageError(
            f"invalid vTPM name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
