"""SQLAlchemy engines set up the way cvtpm's stores need them."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, MetaData, create_engine, event
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
        # The journal mode is kept in the file: set once, by create_schema,
        # since switching it while another connection reads fails at once.
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def create_schema(engine: Engine, metadata: MetaData, then=None) -> None:
    """Create the missing tables (then run `then(engine)`), one process at a time.

    Two processes opening a new SQLite database together both see no table
    and both try to create it, and the loser fails ("table already exists",
    "database is locked"); a lock file beside the database orders them.
    """
    with schema_lock(engine):
        metadata.create_all(engine)
        if then is not None:
            then(engine)


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """An exclusive lock for changing the schema of a SQLite file (else none)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield
        return
    try:
        fd = os.open(
            f"{url.database}.schema-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
    except OSError:
        # No directory to lock in: SQLite itself will say what is wrong.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
