"""The verifier's database: SQLAlchemy models, SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from cvtpm.store.engine import StoreError, engine_for, mask_url
from cvtpm.store.verifier_store import (
    RESULTS_KEPT,
    RegistrationConflict,
    VerifierStore,
)

__all__ = [
    "RESULTS_KEPT",
    "RegistrationConflict",
    "StoreError",
    "VerifierStore",
    "engine_for",
    "mask_url",
]
