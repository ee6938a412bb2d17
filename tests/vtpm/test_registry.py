"""The vTPM registry on SQLite and on PostgreSQL: what it stores, finds and refuses."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from cvtpm.errors import NotFoundError, StateError
from cvtpm.vtpm.registry import Registry, VtpmRecord


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry(request, tmp_path):
    """An empty registry on each kind of database cvtpm documents."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cvtpm.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    registry = Registry(url)
    with registry.engine.begin() as connection:
        connection.execute(text("DELETE FROM vtpms"))
    yield registry
    registry.engine.dispose()


def record(name: str, *, pooled: bool = False, state: str = "running", at: float = 1):
    return VtpmRecord(
        name=name,
        uuid=f"uuid-{name}",
        created_at=at,
        state=state,
        pid=100,
        banks="sha256",
        ak_type="ecc",
        ephemeral=False,
        pooled=pooled,
    )


def test_a_record_comes_back_as_it_went_in(registry):
    """Every field, the defaults included, from a lookup by name."""
    registry.add(record("web"))

    got = registry.get("web")

    assert (got.name, got.uuid, got.state, got.pid) == (
        "web",
        "uuid-web",
        "running",
        100,
    )
    assert got.bank_list == ["sha256"] and got.ek_certs == {}
    assert (got.orderly, got.restarts, got.pooled) == (True, 0, False)


def test_unknown_and_taken_names_are_clear_errors(registry):
    """A name not there, or already taken, is said as such and changes nothing."""
    registry.add(record("web"))

    with pytest.raises(NotFoundError, match="no vTPM named 'db'"):
        registry.get("db")
    with pytest.raises(NotFoundError, match="no vTPM named 'db'"):
        registry.update("db", state="stopped")
    with pytest.raises(StateError, match="a vTPM named 'web' already exists"):
        registry.add(record("web"))
    assert [r.name for r in registry.all()] == ["web"]


def test_lists_and_counts_keep_pool_and_containers_apart(registry):
    """Lists come sorted by name, and the pool's vTPMs are never a container's."""
    for name in ("b", "a", "c"):
        registry.add(record(name))
    registry.add(record("pool-1", pooled=True))

    assert [r.name for r in registry.all()] == ["a", "b", "c"]
    assert [r.name for r in registry.all(pooled=True)] == ["pool-1"]
    assert (registry.count(), registry.count(pooled=True)) == (3, 1)
    assert registry.pooled_processes() == [("pool-1", 100, "running", "uuid-pool-1")]


def test_ready_in_pool_is_running_pooled_oldest_first(registry):
    """Only running pooled vTPMs are offered, the oldest first, as many as asked."""
    registry.add(record("p3", pooled=True, at=3))
    registry.add(record("p1", pooled=True, at=1))
    registry.add(record("p2", pooled=True, at=2, state="creating"))
    registry.add(record("p4", pooled=True, at=4))
    registry.add(record("taken", at=0))

    assert registry.ready_in_pool(limit=2) == [
        ("p1", 100, "uuid-p1"),
        ("p3", 100, "uuid-p3"),
    ]


def test_a_pooled_vtpm_is_claimed_once(registry):
    """The first claim renames it and takes it out of the pool; a second finds
    nothing; a claim to a name in use is refused and changes nothing."""
    registry.add(record("pool-1", pooled=True))
    registry.add(record("pool-2", pooled=True))
    registry.add(record("db"))

    claimed = registry.claim("pool-1", "web", ephemeral=True)

    assert (claimed.name, claimed.uuid, claimed.pooled) == ("web", "uuid-pool-1", False)
    assert claimed.ephemeral
    assert registry.claim("pool-1", "other", ephemeral=False) is None
    with pytest.raises(StateError, match="a vTPM named 'db' already exists"):
        registry.claim("pool-2", "db", ephemeral=False)
    assert registry.get("pool-2").pooled


def test_updates_return_the_row_as_it_now_is(registry):
    """An update's record is the stored row after it, whatever fields it set."""
    registry.add(record("web"))

    after = registry.update("web", state="stopped", pid=None, restarts=2)

    assert (after.state, after.pid, after.restarts) == ("stopped", None, 2)
    assert registry.get("web").restarts == 2
    # A different set of fields is a different statement, built on first use.
    assert registry.update("web", orderly=False).orderly is False


def test_a_removed_vtpm_is_gone(registry):
    """Removing takes only the named row, and a second removal is harmless."""
    registry.add(record("web"))
    registry.add(record("db"))

    registry.remove("web")
    registry.remove("web")  # twice: nothing to remove is not an error

    assert [r.name for r in registry.all()] == ["db"]
