"""eventkit's test harness for your own aggregates, projections and reactions.

```python
from eventkit.testing import AggregateScenario, ProjectionScenario, ReactionScenario, expect

AggregateScenario(Order).given(placed).when(lambda o: o.mark_paid(pid)).then(
    expect(Order.Paid, payment_id=pid)
)
```

- :class:`AggregateScenario`: given events, when a command, then events or an error; no I/O.
- :class:`ProjectionScenario`: given events, then the view's rows, on a real PostgreSQL in a
  :class:`Transaction` rolled back afterwards.
- :class:`ReactionScenario`: given events, then what the reaction did through the
  idempotency ledger (its tables, its ledger, its handler's errors), in such a transaction.
- The pytest plugin (``eventkit.testing.plugin``, registered when eventkit is installed)
  gives the fixtures: ``eventkit_transaction``, ``eventkit_memory_env``,
  ``eventkit_settings``, ``eventkit_application_env`` and the session's
  ``eventkit_database_url``.

Names are imported on first use, so the plugin costs nothing in a test run that uses none.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: eventsourcing's environment for an application on its in-memory recorder, with eventkit's
#: mapper: every event still goes through eventkit's encoding and decoding.
IN_MEMORY_ENV: dict[str, str] = {
    "PERSISTENCE_MODULE": "eventsourcing.popo",
    "MAPPER_TOPIC": "eventkit.infrastructure.transcoding:MemoryKeysPydanticMapper",
    "TRANSCODER_TOPIC": "eventkit.infrastructure.transcoding:PydanticJSONTranscoder",
}


def memory_env() -> dict[str, str]:
    """A copy of :data:`IN_MEMORY_ENV`, for ``Application(env=memory_env())``."""
    return dict(IN_MEMORY_ENV)


_EXPORTS: dict[str, str] = {
    "AggregateScenario": "eventkit.testing.aggregates",
    "ProjectionScenario": "eventkit.testing.projections",
    "HandlerFailedError": "eventkit.testing.projections",
    "ReactionScenario": "eventkit.testing.reactions",
    "Delivery": "eventkit.testing.reactions",
    "Transaction": "eventkit.testing.database",
    "fresh_schema": "eventkit.testing.database",
    "expect": "eventkit.testing.events",
    "new_event": "eventkit.testing.events",
}

__all__ = [
    "IN_MEMORY_ENV",
    "AggregateScenario",
    "Delivery",
    "HandlerFailedError",
    "ProjectionScenario",
    "ReactionScenario",
    "Transaction",
    "expect",
    "fresh_schema",
    "memory_env",
    "new_event",
]

if TYPE_CHECKING:
    from eventkit.testing.aggregates import AggregateScenario
    from eventkit.testing.database import Transaction, fresh_schema
    from eventkit.testing.events import expect, new_event
    from eventkit.testing.projections import HandlerFailedError, ProjectionScenario
    from eventkit.testing.reactions import Delivery, ReactionScenario


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eventkit.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
