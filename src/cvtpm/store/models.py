"""The verifier's tables: containers, their replay state, nonces and results."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The declarative base of every verifier table."""


class ContainerRow(Base):
    """One registered container: its vTPM's EK and AK, and how to reach its daemon."""

    __tablename__ = "containers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    ek_cert_pem: Mapped[str] = mapped_column(Text)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    ak_cert_pem: Mapped[str] = mapped_column(Text, default="")
    ca_chain_pem: Mapped[str] = mapped_column(Text, default="")
    banks: Mapped[list] = mapped_column(JSON)
    daemon_url: Mapped[str] = mapped_column(String(1024), default="")
    ek_fingerprint: Mapped[str] = mapped_column(String(64))
    ak_name: Mapped[str] = mapped_column(String(140))
    activated: Mapped[bool] = mapped_column(Boolean, default=False)
    # SHA-256 of the secret of an outstanding credential activation challenge.
    activation_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    registered_at: Mapped[float] = mapped_column(Float)


class ReplayStateRow(Base):
    """Where incremental replay stands: a few hundred bytes per container."""

    __tablename__ = "replay_state"

    container: Mapped[str] = mapped_column(
        ForeignKey("containers.name", ondelete="CASCADE"), primary_key=True
    )
    next_index: Mapped[int] = mapped_column(Integer, default=0)
    values: Mapped[dict] = mapped_column(JSON, default=dict)  # bank -> hex
    reset_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    restart_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # SHA-256 of the runtime policy that judged the verified entries ("" none).
    policy_digest: Mapped[str] = mapped_column(
        String(64), default="", server_default=""
    )
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


# Columns added after their table was first released: create_all leaves an
# existing table as it is, so cvtpm.store.engine adds them (name -> SQL type).
ADDED_COLUMNS = {
    "replay_state": {"policy_digest": "VARCHAR(64) NOT NULL DEFAULT ''"},
}


class NonceRow(Base):
    """A nonce the verifier handed out; `used_at` is set once evidence spent it."""

    __tablename__ = "nonces"
    __table_args__ = (UniqueConstraint("container", "nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    container: Mapped[str] = mapped_column(
        ForeignKey("containers.name", ondelete="CASCADE"), index=True
    )
    nonce: Mapped[str] = mapped_column(String(128))
    issued_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ResultRow(Base):
    """One attestation result; only the most recent few per container are kept."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    container: Mapped[str] = mapped_column(
        ForeignKey("containers.name", ondelete="CASCADE"), index=True
    )
    trusted: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
