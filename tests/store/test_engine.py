"""Opening the verifier's database: bad URLs and dead servers are one clear line."""

from __future__ import annotations

import socket
import sqlite3

import pytest

from cvtpm.attest.verifier import ReplayState
from cvtpm.store import StoreError, VerifierStore, mask_url
from tests.store.test_verifier_store import registration


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuch://host/db", "cannot use a 'nosuch' database; expected sqlite:///"),
        ("not a url", "not a database URL; expected sqlite:///PATH"),
        ("sqlite:////nonexistent-dir/sub/verifier.db", "unable to open database"),
    ],
)
def test_unusable_urls_are_store_errors(url, message):
    """A URL of an unknown kind, not a URL, or a path that cannot be made is named."""
    with pytest.raises(StoreError, match=message):
        VerifierStore(url)


def test_an_unreachable_server_is_named_without_its_password():
    """A PostgreSQL URL whose server is not there fails fast, the password masked."""
    with socket.socket() as bound:  # bound, never listening: connections refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        url = f"postgresql://cvtpm:hunter2@127.0.0.1:{port}/verifier"
        with pytest.raises(StoreError) as caught:
            VerifierStore(url)
    text = str(caught.value)
    assert f"cvtpm:***@127.0.0.1:{port}/verifier" in text
    assert "hunter2" not in text and "\n" not in text


def test_passwords_are_masked_even_in_urls_that_do_not_parse():
    """mask_url hides a password whether or not SQLAlchemy can read the URL."""
    assert mask_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "pw" not in mask_url("postgresql://u:pw@h:notaport/db")


def test_a_database_from_before_policy_digest_gains_the_column(tmp_path):
    """An older database without replay_state.policy_digest is brought up to date."""
    path = tmp_path / "verifier.db"
    url = f"sqlite:///{path}"
    store = VerifierStore(url)
    store.save_registration(registration())
    store.save_state("web", ReplayState(3, {"sha1": b"1" * 20}, 1, 2))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE replay_state DROP COLUMN policy_digest")

    store = VerifierStore(url)
    assert store.state("web") == ReplayState(3, {"sha1": b"1" * 20}, 1, 2)
    store.close()
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(replay_state)")]
    assert "policy_digest" in columns
