"""What the vTPM manager reports: a vTPM as users and verifiers see it, and
how a start went."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class VtpmInfo:
    """Everything a user or verifier needs to know about one vTPM."""

    name: str
    uuid: str
    state: str
    pid: int | None
    tcti: str
    socket: str
    banks: list[str]
    ek_handles: dict[str, int]
    ek_certs_pem: dict[str, str]
    ak_handle: int
    ak_type: str
    ak_cert_pem: str
    ca_chain_pem: str
    restarts: int
    ephemeral: bool

    @property
    def ek_handle(self) -> int:
        """The EK a verifier activates the AK with: the ECC one if there is one."""
        return self.ek_handles.get("ecc", next(iter(self.ek_handles.values())))

    @property
    def ek_cert_pem(self) -> str:
        """The certificate of that EK."""
        return self.ek_certs_pem.get("ecc", next(iter(self.ek_certs_pem.values())))

    def to_dict(self) -> dict:
        """A JSON-ready dict, as `--json` prints it."""
        return asdict(self)


@dataclass(frozen=True)
class StartReport:
    """How a start went: resumed from an orderly stop, or what was lost."""

    name: str
    pid: int
    resumed: bool
    lost: list[str] = field(default_factory=list)
    was_running: bool = False

    def describe(self) -> str:
        """One line for the log: what the start found and what it lost."""
        if self.was_running:
            return f"{self.name}: already running (pid {self.pid})"
        if self.resumed:
            return f"{self.name}: resumed (pid {self.pid}); nothing lost"
        if not self.lost:
            return f"{self.name}: started fresh (pid {self.pid})"
        return (
            f"{self.name}: restarted after an unclean stop (pid {self.pid}); lost: "
            + ", ".join(self.lost)
            + "; kept: keys, NV and certificates"
        )
