"""The dramatiq brokers eventkit makes for reactions (no broker server needed)."""

from __future__ import annotations

import pytest
from dramatiq.middleware import CurrentMessage, Retries

from eventkit.infrastructure.broker import BrokerKind, create_broker


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        (BrokerKind.RABBITMQ, "amqp://guest:guest@127.0.0.1:9/"),
        (BrokerKind.REDIS, "redis://127.0.0.1:9/0"),
    ],
)
def test_a_broker_runs_only_the_middleware_reactions_use(kind: BrokerKind, url: str) -> None:
    """Retries and CurrentMessage, nothing of dramatiq's other defaults (their hooks ran on
    every message for nothing); the PostgreSQL broker is made the same way (its tests run
    it against a server)."""
    broker = create_broker(kind, database_url="postgresql://unused", schema="s", broker_url=url)
    try:
        assert [type(m) for m in broker.middleware] == [Retries, CurrentMessage]
        # The options a reaction's actor is declared with are the broker's; dramatiq's time
        # limit is not (the executor limits the handler itself).
        assert {"max_retries", "min_backoff", "max_backoff"} <= broker.actor_options
        assert "time_limit" not in broker.actor_options
    finally:
        broker.close()
