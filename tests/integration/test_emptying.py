"""The per-test emptying of the tables (tests/conftest.py) against sessions holding locks."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, func, select, text

from tests.conftest import empty_tables
from tests.processes import wait_until
from tests.world import World
from worker.store.tables import workspaces


def emptying_waits_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'"
            )
        ).scalar_one()
    return int(waiting) == 1


class TestEmptyingGivesWay:
    """A writer locking tables in another order than the emptying neither deadlocks nor fails."""

    def test_a_lock_order_inversion_ends_with_both_done(self, engine, redis):
        World(engine, redis)
        failures: list[BaseException] = []

        def empty() -> None:
            try:
                empty_tables(engine)
            except BaseException as exc:
                failures.append(exc)

        emptying = threading.Thread(target=empty)
        with engine.connect() as straggler:
            # A worker's write: a table late in the emptying's order first, then the outbox.
            straggler.execute(text("LOCK TABLE messages IN ROW EXCLUSIVE MODE"))
            emptying.start()
            wait_until(lambda: emptying_waits_for_a_lock(engine), 10, "the emptying to wait")
            straggler.execute(text("SET LOCAL lock_timeout = '5s'"))
            straggler.execute(text("LOCK TABLE outbox IN ROW EXCLUSIVE MODE"))
            straggler.commit()
        emptying.join(timeout=30)

        assert (emptying.is_alive(), failures) == (False, [])
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(workspaces)).scalar_one() == 0
