"""The error types every cvtpm component raises, each able to explain itself."""

from __future__ import annotations


class CvtpmError(Exception):
    """Base of all errors a user may see; the CLI prints `explain()` and exits 1."""

    exit_code = 1

    def explain(self) -> str:
        """One or more lines telling a user what went wrong and what to do."""
        return str(self)


class ParseError(CvtpmError, ValueError):
    """Malformed input: says what was being read and at which byte or line."""

    def __init__(
        self, message: str, *, offset: int | None = None, entry: int | None = None
    ):
        self.offset = offset
        self.entry = entry
        where = []
        if entry is not None:
            where.append(f"entry {entry}")
        if offset is not None:
            where.append(f"offset {offset}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.message = message


class UsageError(CvtpmError):
    """The command was called wrongly (bad name, unknown choice); exit code 2."""

    exit_code = 2


class ConfigError(CvtpmError):
    """The host is not set up the way a command needs (paths, keys, packages)."""


class NotFoundError(CvtpmError):
    """A named object (vTPM, container, policy) does not exist."""


class StateError(CvtpmError):
    """An object is in the wrong state for the operation (running, locked, corrupt)."""


class TpmError(CvtpmError):
    """A TPM command failed; carries the TPM response code when there is one."""

    def __init__(self, message: str, *, rc: int | None = None):
        self.rc = rc
        source = "TPM" if self.from_tpm else "TSS"
        super().__init__(message if rc is None else f"{message} ({source} rc 0x{rc:x})")

    @property
    def from_tpm(self) -> bool:
        """True if the TPM itself answered with this code; codes of 0x10000
        and up are a TSS layer's (the TCTI's: the command got no answer)."""
        return self.rc is not None and self.rc < 0x10000
