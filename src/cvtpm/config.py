"""Where cvtpm keeps its state on the host, overridable for tests and unusual hosts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cvtpm import _defaults
from cvtpm.errors import ConfigError

DEFAULT_STATE_ROOT = Path(_defaults.STATE_DIR)
DEFAULT_RUN_ROOT = Path(_defaults.RUN_DIR)


@dataclass(frozen=True)
class Paths:
    """The host directories: persistent state under `state`, sockets under `run`."""

    state: Path = DEFAULT_STATE_ROOT
    run: Path = DEFAULT_RUN_ROOT

    @classmethod
    def from_env(cls) -> Paths:
        """Paths from CVTPM_STATE_DIR and CVTPM_RUN_DIR, else the defaults."""
        return cls(
            state=Path(os.environ.get(_defaults.STATE_DIR_ENV, DEFAULT_STATE_ROOT)),
            run=Path(os.environ.get(_defaults.RUN_DIR_ENV, DEFAULT_RUN_ROOT)),
        )

    def ensure(self) -> Paths:
        """Create the state and run trees, readable by root only, and return self."""
        for directory in (self.state, self.vtpms, self.ca, self.lists, self.run):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(directory, 0o700)
            except OSError as exc:
                raise ConfigError(
                    f"cannot use {directory} for cvtpm's files: {exc.strerror}"
                ) from exc
        return self

    @property
    def vtpms(self) -> Path:
        """One state directory per vTPM lives here."""
        return self.state / "vtpm"

    @property
    def ca(self) -> Path:
        """The local CA's keys and certificates."""
        return self.state / "ca"

    @property
    def master_key(self) -> Path:
        """The host master key from which every vTPM's state key is derived."""
        return self.state / "master.key"

    @property
    def registry_url(self) -> str:
        """The SQLAlchemy URL of the host's vTPM registry."""
        return f"sqlite:///{self.state / 'cvtpm.db'}"

    @property
    def lists(self) -> Path:
        """Measurement lists and their journals, one directory per container."""
        return self.state / "lists"
