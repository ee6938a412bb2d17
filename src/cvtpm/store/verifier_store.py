"""The verifier's persistence: SQLite by default, PostgreSQL by URL (psycopg 3)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cvtpm.attest.result import Result
from cvtpm.attest.verifier import Registration, ReplayState
from cvtpm.errors import NotFoundError, StateError
from cvtpm.store.engine import StoreError, describe, open_database
from cvtpm.store.models import ContainerRow, NonceRow, ReplayStateRow, ResultRow

RESULTS_KEPT = 20  # per container; older results are dropped
NONCES_KEPT = 64  # spent nonces remembered per container, to name a reuse
NONCE_LIFETIME = 300.0  # seconds an unspent nonce stays valid


class RegistrationConflict(StateError):
    """A name is registered with another EK; it must be deleted to be reused."""


class VerifierStore:
    """Registered containers, their replay state, nonces and bounded result history."""

    def __init__(self, url: str):
        self.url = url
        self.engine = open_database(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error.

        A database that cannot be reached (OperationalError, InterfaceError)
        is a StoreError naming it, not a driver's traceback.
        """
        try:
            with self._sessions.begin() as session:
                yield session
        except (OperationalError, InterfaceError) as exc:
            raise StoreError(describe(exc, self.url)) from None

    # -- registrations -------------------------------------------------------------

    def save_registration(self, reg: Registration, policy: str | None = None) -> None:
        """Store a registration, or update the one of its name if its EK is the same.

        An update keeps the container's results and nonces, an activation its AK
        already proved, and its replay state unless the banks or the policy
        change; a `policy` of None keeps the stored one. A name registered with
        another EK is a RegistrationConflict.
        """
        summary = reg.summary()
        with self.session() as s:
            row = s.get(ContainerRow, reg.name, with_for_update=True)
            if row is None:
                row = ContainerRow(name=reg.name, policy=policy, activated=False)
                s.add(row)
                s.add(ReplayStateRow(container=reg.name, values={}))
            elif not self._as_registration(row).same_ek(reg):
                raise RegistrationConflict(
                    f"container {reg.name!r} is registered with another EK"
                    f" (certificate {row.ek_fingerprint[:16]}...); delete that"
                    " registration first to register a new vTPM under this name"
                )
            else:
                restart = list(row.banks) != list(reg.banks) or (
                    policy is not None and policy != row.policy
                )
                if restart:
                    self._restart(s, reg.name)
                if policy is not None:
                    row.policy = policy

            same_ak = row.ak_public == reg.ak_public
            if not same_ak:
                row.activation_digest = None
            row.activated = reg.activated or (same_ak and bool(row.activated))
            row.ek_cert_pem = reg.ek_cert_pem
            row.ak_public = reg.ak_public
            row.ak_cert_pem = reg.ak_cert_pem
            row.ca_chain_pem = reg.ca_chain_pem
            row.banks = list(reg.banks)
            row.daemon_url = reg.daemon_url
            row.ek_fingerprint = summary["ek_fingerprint"]
            row.ak_name = summary["ak_name"]
            row.registered_at = time.time()

    def registration(self, name: str) -> Registration:
        """The registration of `name`; NotFoundError if there is none."""
        with self.session() as s:
            return self._as_registration(self._row(s, name))

    def names(self) -> list[str]:
        """Every registered container's name, sorted."""
        with self.session() as s:
            return list(
                s.scalars(select(ContainerRow.name).order_by(ContainerRow.name))
            )

    def delete(self, name: str) -> None:
        """Forget a container with its state, nonces and results."""
        with self.session() as s:
            s.delete(self._row(s, name))

    def policy(self, name: str) -> str | None:
        """The runtime policy text registered for `name`, if any."""
        with self.session() as s:
            return self._row(s, name).policy

    def set_policy(self, name: str, policy: str | None) -> None:
        """Replace the runtime policy of `name`; a new one restarts its replay state."""
        with self.session() as s:
            row = self._row(s, name)
            if row.policy != policy:
                row.policy = policy
                self._restart(s, name)

    def set_activation(self, name: str, digest: str | None, activated: bool) -> None:
        """Record an outstanding activation challenge, or its successful end."""
        with self.session() as s:
            row = self._row(s, name)
            row.activation_digest = digest
            row.activated = activated

    def activation_digest(self, name: str) -> str | None:
        """The digest of the outstanding activation secret of `name`."""
        with self.session() as s:
            return self._row(s, name).activation_digest

    # -- replay state ------------------------------------------------------------------

    def state(self, name: str) -> ReplayState:
        """Where replay of `name`'s list stands."""
        with self.session() as s:
            row = s.get(ReplayStateRow, name)
            if row is None:
                raise NotFoundError(f"container {name!r} is not registered")
            return ReplayState.from_dict(
                {
                    "index": row.next_index,
                    "values": row.values,
                    "reset_count": row.reset_count,
                    "restart_count": row.restart_count,
                    "policy_digest": row.policy_digest,
                }
            )

    def save_state(self, name: str, state: ReplayState) -> None:
        """Store the state a trusted attestation reached."""
        data = state.to_dict()
        with self.session() as s:
            row = s.get(ReplayStateRow, name)
            if row is None:
                raise NotFoundError(f"container {name!r} is not registered")
            row.next_index = data["index"]
            row.values = data["values"]
            row.reset_count = data["reset_count"]
            row.restart_count = data["restart_count"]
            row.policy_digest = data["policy_digest"]
            row.updated_at = time.time()

    def _restart(self, s: Session, name: str) -> None:
        """Nothing of `name`'s list verified any more; the TPM's counters are kept."""
        row = s.get(ReplayStateRow, name)
        if row is not None:
            row.next_index = 0
            row.values = {}
            row.policy_digest = ""
            row.updated_at = time.time()

    # -- nonces -----------------------------------------------------------------------

    def issue_nonce(self, name: str, nonce: bytes) -> None:
        """Remember a nonce handed out for `name`."""
        with self.session() as s:
            self._row(s, name)
            s.add(NonceRow(container=name, nonce=nonce.hex(), issued_at=time.time()))

    def spend_nonce(self, name: str, nonce: bytes) -> bool:
        """Mark a nonce used; True only if it was issued, unexpired and never used."""
        now = time.time()
        with self.session() as s:
            row = s.scalars(
                select(NonceRow)
                .where(NonceRow.container == name, NonceRow.nonce == nonce.hex())
                .with_for_update()
            ).first()
            if row is None or row.used_at is not None:
                return False
            row.used_at = now
            fresh = now - row.issued_at <= NONCE_LIFETIME
            self._prune_nonces(s, name, now)
        return fresh

    def nonce_known(self, name: str, nonce: bytes) -> bool:
        """True if this nonce was ever issued for `name` (and is still remembered)."""
        with self.session() as s:
            query = select(NonceRow.id).where(
                NonceRow.container == name, NonceRow.nonce == nonce.hex()
            )
            return s.scalars(query).first() is not None

    def _prune_nonces(self, s: Session, name: str, now: float) -> None:
        """Drop expired unspent nonces and all but the newest spent ones."""
        s.execute(
            delete(NonceRow).where(
                NonceRow.container == name,
                NonceRow.used_at.is_(None),
                NonceRow.issued_at < now - NONCE_LIFETIME,
            )
        )
        keep = select(NonceRow.id).where(
            NonceRow.container == name, NonceRow.used_at.is_not(None)
        )
        keep = keep.order_by(NonceRow.used_at.desc()).limit(NONCES_KEPT)
        s.execute(
            delete(NonceRow).where(
                NonceRow.container == name,
                NonceRow.used_at.is_not(None),
                NonceRow.id.not_in(list(s.scalars(keep))),
            )
        )

    # -- results ----------------------------------------------------------------------

    def add_result(self, result: Result) -> None:
        """Append a result, keeping only the newest RESULTS_KEPT of its container."""
        with self.session() as s:
            s.add(
                ResultRow(
                    container=result.container,
                    trusted=result.trusted,
                    result=result.to_dict(),
                    created_at=result.time,
                )
            )
            s.flush()
            newest = select(ResultRow.id).where(ResultRow.container == result.container)
            newest = newest.order_by(ResultRow.id.desc()).limit(RESULTS_KEPT)
            s.execute(
                delete(ResultRow).where(
                    ResultRow.container == result.container,
                    ResultRow.id.not_in(list(s.scalars(newest))),
                )
            )

    def results(self, name: str, limit: int = RESULTS_KEPT) -> list[Result]:
        """The newest results of `name`, newest first."""
        with self.session() as s:
            self._row(s, name)
            query = select(ResultRow.result).where(ResultRow.container == name)
            rows = s.scalars(query.order_by(ResultRow.id.desc()).limit(limit))
            return [Result.from_dict(r) for r in rows]

    def latest_result(self, name: str) -> Result | None:
        """The newest result of `name`, or None before its first attestation."""
        results = self.results(name, limit=1)
        return results[0] if results else None

    @staticmethod
    def _as_registration(row: ContainerRow) -> Registration:
        return Registration(
            name=row.name,
            ek_cert_pem=row.ek_cert_pem,
            ak_public=row.ak_public,
            ak_cert_pem=row.ak_cert_pem,
            ca_chain_pem=row.ca_chain_pem,
            banks=list(row.banks),
            daemon_url=row.daemon_url,
            activated=row.activated,
        )

    def _row(self, s: Session, name: str) -> ContainerRow:
        row = s.get(ContainerRow, name)
        if row is None:
            raise NotFoundError(f"container {name!r} is not registered")
        return row
