"""The daemon's side of the OCI hook: a container's state in, a stage run here.

`cvtpm-hook` only carries the runtime's state to the daemon
(cvtpm.runtime.hook_main); the stage itself, cvtpm.runtime.hook, runs in
the daemon against its own Host, which also spares every container start the
hook's imports and a second process for the mount.
"""

from __future__ import annotations

import os
from typing import Any

from cvtpm.errors import ConfigError, NotFoundError, ParseError, UsageError
from cvtpm.runtime.hook import run_stage
from cvtpm.runtime.hook_main import MAX_STATE_SIZE, STAGE_NAMES
from cvtpm.runtime.oci import parse_state
from cvtpm.server.host import Host
from cvtpm.server.request import ContainerRequest


class HostContainers:
    """The Host behind the interface cvtpm.runtime.hook's stages call."""

    def __init__(self, host: Host):
        self.host = host

    def create_container(self, body: dict[str, Any]) -> dict[str, Any]:
        """Set the container up (Host.add_container)."""
        return self.host.add_container(ContainerRequest(**body))

    def delete_container(self, name: str) -> bool:
        """Tear the container down; False if it was not set up."""
        try:
            self.host.remove_container(name)
        except NotFoundError:
            return False
        return True


def run_hook(host: Host, stage: str, body: bytes, state_dir: str | None) -> dict:
    """Run hook `stage` on the OCI state `body`; the outcome as JSON-ready data.

    `state_dir` is the --state-dir the hook was configured with, if any: a
    hook meant for another daemon's state is refused rather than served here.
    """
    # 1. The call: a known stage, for this daemon, with a state of sane size.
    if stage not in STAGE_NAMES:
        known = ", ".join(sorted(STAGE_NAMES))
        raise UsageError(f"unknown hook stage {stage!r}; expected one of {known}")
    if state_dir and not _same_directory(state_dir, str(host.paths.state)):
        raise ConfigError(
            f"the hook was configured with --state-dir {state_dir}, but this daemon"
            f" keeps its state in {host.paths.state}; point the hook at the"
            " daemon's directories (--state-dir and --run-dir)"
        )
    if len(body) > MAX_STATE_SIZE:
        raise ParseError(f"OCI state of {len(body)} bytes; a state is a few kilobytes")

    # 2. The state, then the stage.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError("OCI state is not UTF-8 text", offset=exc.start) from None
    state = parse_state(text)
    outcome = run_stage(STAGE_NAMES[stage], state, host.paths, HostContainers(host))
    return outcome.to_dict()


def _same_directory(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
