"""Opening the verifier's database: one URL, every table in place, clear errors.

SQLite by default, PostgreSQL by a postgresql:// URL (psycopg 3). A URL that
does not parse, names a database kind we cannot drive, or leads to no database
is a StoreError that names the URL with its password masked.
"""

from __future__ import annotations

import re

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from cvtpm.db import create_schema
from cvtpm.errors import ConfigError
from cvtpm.store.models import ADDED_COLUMNS, Base

EXPECTED = "expected sqlite:///PATH or postgresql://USER@HOST/DATABASE"
CONNECT_TIMEOUT = 10  # seconds to reach a PostgreSQL server before giving up


class StoreError(ConfigError):
    """The verifier's database cannot be opened or reached."""


def mask_url(url: str) -> str:
    """`url` with any password replaced by ***, whether or not it parses."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _mask_text(url)


def _mask_text(text: str) -> str:
    """Passwords of URLs (user:PASSWORD@) and of key=value pairs in `text` masked."""
    masked = re.sub(r"(://[^/:@\s]*:)[^/@\s]*@", r"\1***@", text)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", masked)


def engine_for(url: str) -> Engine:
    """An engine for `url`; a bare postgresql:// URL is driven by psycopg 3."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    shown = mask_url(url)
    try:
        if url.startswith("postgresql+psycopg://"):
            engine = create_engine(
                url, connect_args={"connect_timeout": CONNECT_TIMEOUT}
            )
        else:
            engine = create_engine(url)
    except NoSuchModuleError:
        kind = url.partition(":")[0]
        raise StoreError(
            f"verifier database {shown}: cannot use a {kind!r} database; {EXPECTED}"
        ) from None
    except (ArgumentError, ValueError):
        raise StoreError(
            f"verifier database {shown}: not a database URL; {EXPECTED}"
        ) from None
    except ImportError as exc:
        raise StoreError(
            f"verifier database {shown}: its driver {exc.name or ''} is not"
            " installed (PostgreSQL needs: pip install 'cvtpm[postgres]')"
        ) from None
    if engine.dialect.name == "sqlite":
        # SQLite enforces foreign keys (and so ON DELETE CASCADE) only when asked.
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_database(url: str) -> Engine:
    """An engine for `url` with every table and column in place, or a StoreError."""
    engine = engine_for(url)
    try:
        create_schema(engine, Base.metadata, then=_add_columns)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(describe(exc, url)) from None
    return engine


def describe(exc: SQLAlchemyError, url: str) -> str:
    """One line on a database error: the URL (masked) and what the driver said."""
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    reason = lines[0] if lines else type(cause).__name__
    # A driver may echo what it was given; never a password.
    reason = _mask_text(reason)
    return f"verifier database {mask_url(url)}: {reason}"


def _add_columns(engine: Engine) -> None:
    """Add the columns of ADDED_COLUMNS that an older database lacks."""
    inspector = inspect(engine)
    for table, columns in ADDED_COLUMNS.items():
        present = {column["name"] for column in inspector.get_columns(table)}
        for name, sql_type in columns.items():
            if name in present:
                continue
            try:
                with engine.begin() as connection:
                    connection.execute(
                        text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
                    )
            except SQLAlchemyError:
                # Another process opening the same database may have added it.
                again = {c["name"] for c in inspect(engine).get_columns(table)}
                if name not in again:
                    raise


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
