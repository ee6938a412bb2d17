"""SQLite databases that several processes open for the first time at once."""

from __future__ import annotations

import threading

from cvtpm.vtpm.registry import Registry


def test_a_new_database_opened_by_many_at_once(tmp_path):
    """Every opener of a new registry gets its tables; none fails on the race."""
    for round_ in range(60):
        url = f"sqlite:///{tmp_path / f'r{round_}.db'}"
        errors: list[BaseException] = []

        def open_registry(url=url, errors=errors):
            try:
                Registry(url).engine.dispose()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_registry) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert Registry(url).all() == []
