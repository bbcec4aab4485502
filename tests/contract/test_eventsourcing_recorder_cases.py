"""eventsourcing's own ApplicationRecorder test cases, run against eventkit's recorder.

Where eventkit's recorder deliberately differs from what a case expects, the case is
overridden here with the reason.
"""

from __future__ import annotations

import unittest
from uuid import uuid4

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
)
from psycopg import sql

from eventkit.infrastructure.factory import shared_pool
from eventkit.infrastructure.migrations import migrate
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.settings import Settings


def _fresh_recorder(case: unittest.TestCase) -> PostgresEventRecorder:
    base = Settings.from_env()
    settings = Settings(base.database_url, "eventkit_tests", base.home, 2, 40)
    pool, _ = shared_pool(settings)
    schema = f"es_case_{uuid4().hex[:16]}"
    with pool.connection() as conn:
        migrate(conn, schema)

    def drop() -> None:
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    case.addCleanup(drop)
    return PostgresEventRecorder(pool, schema)


class TestEventkitApplicationRecorder(ApplicationRecorderTestCase[PostgresEventRecorder]):
    def create_recorder(self) -> PostgresEventRecorder:
        return _fresh_recorder(self)

    def test_insert_subscribe(self) -> None:
        # eventsourcing marks this case optional; eventkit's recorder supports subscribe().
        self.optional_test_insert_subscribe()


class TestNonInterleavingNotificationIDs(NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return _fresh_recorder(self)

    @unittest.skip(
        "eventkit deliberately differs: writers take no table lock, so two concurrent saves "
        "may draw interleaved notification ids. What followers need instead holds and is "
        "tested in tests/integration/test_gap_safety.py: in log (transaction id, "
        "notification id) order each transaction's events are contiguous."
    )
    def test(self) -> None:  # pragma: no cover
        raise AssertionError("skipped")


class TestInMemoryApplicationRecorder(ApplicationRecorderTestCase[ApplicationRecorder]):
    """The in-memory double that unit tests use passes the same cases."""

    def create_recorder(self) -> ApplicationRecorder:
        return POPOApplicationRecorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()
