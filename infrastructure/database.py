"""Connections to PostgreSQL: finding the server, the pool, and translating transient errors."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from eventkit.infrastructure.embedded import EmbeddedPostgres
from eventkit.infrastructure.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    EmbeddedPostgresStoppedError,
)
from eventkit.infrastructure.settings import Settings, redact

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The oldest server with ``pg_current_xact_id()`` and ``xid8``, on which the log's order rests.
MIN_SERVER_VERSION = 130000

#: How long a pool keeps trying to open one connection, with its own backoff (1 s, then
#: doubling), before it gives up on that attempt; the next request for a connection starts
#: a new attempt at once. psycopg_pool's default (5 minutes) let the backoff grow to a
#: minute: workers resumed 103 s after a 150 s outage.
RECONNECT_TIMEOUT_S = 2.0

#: Errors after which the same work may succeed on a new connection or a new attempt.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg_pool.PoolTimeout,
)


def resolve_database_url(settings: Settings, *, start: bool = True) -> str:
    """Return ``DATABASE_URL``, else the embedded server's URL, starting it when ``start``
    (the workers, the demo and an application in development). With ``start`` false a
    stopped embedded server raises :class:`EmbeddedPostgresStoppedError` saying how to
    start it: read-only and operator commands never start a server."""
    if settings.database_url:
        return settings.database_url
    server = EmbeddedPostgres(settings.home)
    if start:
        return server.start()
    url = server.url()
    if url is None:
        raise EmbeddedPostgresStoppedError(
            f"the embedded PostgreSQL server (data in {server.pgdata}) is stopped; start it "
            "with `eventkit db start`, or set DATABASE_URL"
        )
    return url


def create_pool(
    url: str, settings: Settings, *, name: str = "eventkit"
) -> psycopg_pool.ConnectionPool:
    """Open a pool of autocommit connections and check the server once.

    Connections are in autocommit mode: a single statement is its own transaction (one
    round trip for a one-statement append), and multi-statement work opens an explicit
    ``conn.transaction()``. With ``settings.prepared_statements`` off, psycopg prepares
    nothing on them and recorders on the pool append without prepared statements.
    """
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": name}
    if not settings.prepared_statements:
        kwargs["prepare_threshold"] = None
    pool = psycopg_pool.ConnectionPool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        kwargs=kwargs,
        name=name,
        open=False,
        # A writer waits this long at most for a connection (EVENTKIT_WRITE_TIMEOUT);
        # the recorder bounds its retries by it too.
        timeout=settings.write_timeout_s,
        reconnect_timeout=RECONNECT_TIMEOUT_S,
    )
    check_connection(url, settings.connect_timeout_s, kwargs)
    try:
        pool.open(wait=True, timeout=settings.connect_timeout_s)
    except psycopg_pool.PoolTimeout as e:
        pool.close()
        raise DatabaseUnavailableError(
            f"could not connect to PostgreSQL at {redact(url)} within "
            f"{settings.connect_timeout_s:g} s (EVENTKIT_CONNECT_TIMEOUT)"
        ) from e
    with pool.connection() as conn:
        version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        pool.close()
        raise ConfigurationError(
            f"PostgreSQL at {redact(url)} is version {version // 10000}; eventkit needs 13 or "
            "newer (it orders the log by pg_current_xact_id())"
        )
    return pool


#: SQLSTATEs of connection failures that waiting cannot cure: no such database, no such
#: role or a wrong password, no pg_hba.conf entry.
_PERMANENT_CONNECT_FAILURES = frozenset({"3D000", "28000", "28P01"})


def reason(error: BaseException) -> str:
    """PostgreSQL's (or libpq's) own reason for ``error``, on one line and redacted."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return redact("; ".join(lines) or type(error).__name__)


def check_connection(url: str, timeout_s: float, kwargs: dict[str, Any] | None = None) -> None:
    """Connect to ``url`` once, trying again until ``timeout_s`` has passed while the
    server refuses or does not answer; raise :class:`DatabaseUnavailableError` with
    PostgreSQL's own reason (at once when waiting cannot help: no such database or role, a
    wrong password)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            # libpq's connect_timeout counts whole seconds, at least 2.
            psycopg.connect(url, connect_timeout=max(2, math.ceil(left)), **(kwargs or {})).close()
            return
        except psycopg.OperationalError as e:
            permanent = e.sqlstate in _PERMANENT_CONNECT_FAILURES or "does not exist" in str(e)
            if permanent or time.monotonic() + 0.25 >= deadline:
                waited = "" if permanent else f" within {timeout_s:g} s (EVENTKIT_CONNECT_TIMEOUT)"
                raise DatabaseUnavailableError(
                    f"could not connect to PostgreSQL at {redact(url)}{waited}: {reason(e)}"
                ) from None
        time.sleep(0.25)


def retry_transient(
    operation: Callable[[], T],
    *,
    what: str,
    attempts: int = 5,
    first_delay_s: float = 0.05,
    max_delay_s: float = 2.0,
    on_failure: Callable[[], None] | None = None,
    within_s: float | None = None,
) -> T:
    """Run ``operation``, retrying transient database errors with exponential backoff.

    Only call this with work that is safe to repeat (a read, or a write whose repetition
    is detected). After ``attempts`` failures, raise :class:`DatabaseUnavailableError`
    naming ``what`` and the last error. ``on_failure`` runs after each failure (a pool's
    ``check``, which drops every connection a server restart has broken, not just one).
    ``within_s``: give up once that many seconds have passed (a writer's bound,
    ``EVENTKIT_WRITE_TIMEOUT``: the pool's ``timeout``), whatever the attempts left.
    """
    delay = first_delay_s
    deadline = None if within_s is None else time.monotonic() + within_s
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except TRANSIENT_ERRORS as e:
            late = deadline is not None and time.monotonic() + delay >= deadline
            if attempt == attempts or late:
                bound = "" if within_s is None else f" within {within_s:g} s"
                raise DatabaseUnavailableError(
                    f"{what} failed{bound} ({attempt} attempt(s)); the database is "
                    f"unavailable; last error: {type(e).__name__}: {e}"
                ) from e
            logger.warning(
                "%s failed (attempt %d of %d, retrying in %.2f s): %s",
                what,
                attempt,
                attempts,
                delay,
                e,
            )
            if on_failure is not None:
                on_failure()
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
    raise AssertionError("unreachable")  # pragma: no cover
