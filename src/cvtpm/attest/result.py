"""Verdicts as data: a failure names its check with a dotted reason id."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TRUSTED = "trusted"
NOT_TRUSTED = "not trusted"


@dataclass(frozen=True)
class Failure:
    """One failed check: `reason` is a dotted id such as `quote.nonce_reused`."""

    reason: str
    message: str
    index: int | None = None  # the list entry the failure is about, if any
    path: str | None = None  # that entry's file path, if any
    digest: str | None = None  # that entry's file digest as logged, "alg:hex"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (entries without an index or path leave them out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        """The inverse of `to_dict`."""
        return cls(data["reason"], data["message"], data.get("index"), data.get("path"))

    @classmethod
    def coerce(cls, other: Any) -> Failure:
        """A Failure from any object with `reason`/`message` (and maybe index/path)."""
        if isinstance(other, Failure):
            return other
        reason = getattr(other, "reason", None) or getattr(other, "id", "policy.failed")
        message = getattr(other, "message", None) or str(other)
        return cls(
            reason,
            message,
            getattr(other, "index", None),
            getattr(other, "path", None),
            getattr(other, "digest", None),
        )


@dataclass
class Result:
    """The outcome of one attestation of one container."""

    container: str
    failures: list[Failure] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # e.g. "quote.tpm_reset"
    start_index: int = 0  # first list entry this attestation looked at
    verified_index: int = 0  # entries proven by the PCRs so far (all of 0..n-1)
    pending: int = 0  # entries received but not yet covered by the quoted PCR
    new_entries: int = 0  # entries replayed by this attestation
    time: float = 0.0  # seconds since the epoch when the verdict was reached

    @property
    def trusted(self) -> bool:
        """True when no check failed."""
        return not self.failures

    @property
    def verdict(self) -> str:
        """ "trusted" or "not trusted"."""
        return TRUSTED if self.trusted else NOT_TRUSTED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the verdict spelled out."""
        return {
            "container": self.container,
            "verdict": self.verdict,
            "trusted": self.trusted,
            "failures": [f.to_dict() for f in self.failures],
            "events": list(self.events),
            "start_index": self.start_index,
            "verified_index": self.verified_index,
            "pending": self.pending,
            "new_entries": self.new_entries,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """The inverse of `to_dict`."""
        return cls(
            container=data["container"],
            failures=[Failure.from_dict(f) for f in data.get("failures", [])],
            events=list(data.get("events", [])),
            start_index=data.get("start_index", 0),
            verified_index=data.get("verified_index", 0),
            pending=data.get("pending", 0),
            new_entries=data.get("new_entries", 0),
            time=data.get("time", 0.0),
        )


def explain(result: Result) -> str:
    """The verdict and its failures as lines a person reads."""
    lines = [f"{result.container}: {result.verdict}"]
    for failure in result.failures:
        where = ""
        if failure.index is not None:
            where = (
                f" (entry {failure.index}{f', {failure.path}' if failure.path else ''})"
            )
        lines.append(f"  {failure.reason}: {failure.message}{where}")
    for event in result.events:
        lines.append(f"  note: {event}")
    lines.append(
        f"  verified entries: {result.verified_index}, pending: {result.pending},"
        f" new this time: {result.new_entries}"
    )
    return "\n".join(lines)
