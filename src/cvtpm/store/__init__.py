"""The verifier's database: SQLAlchemy models, SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from cvtpm.store.verifier_store import RESULTS_KEPT, VerifierStore, engine_for

__all__ = ["RESULTS_KEPT", "VerifierStore", "engine_for"]
