"""SQLAlchemy engines set up the way cvtpm's stores need them."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and their directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    if parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database)
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The database and its WAL files are created with the process umask;
        # creating the file first fixes the mode of all three to 0600.
        database.touch(mode=0o600, exist_ok=True)
        os.chmod(database, 0o600)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        # WAL lets the daemon read while a CLI writes; NORMAL sync is durable in
        # WAL mode across process crashes, which is what the registry needs.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
