"""Crypto-shredding on a real PostgreSQL: personal fields encrypted per data subject, and
unreadable everywhere (events, snapshots, rebuilds) once the subject's key is deleted."""

from __future__ import annotations

import json
from typing import Any, ClassVar
from uuid import UUID, uuid4

import psycopg_pool
import pytest
from eventsourcing.domain import event
from psycopg import sql

from eventkit.cli import main as eventkit_main
from eventkit.domain.application import Application
from eventkit.domain.model import Aggregate
from eventkit.domain.personal import ERASED, PersonalData, PersonalDataError
from eventkit.domain.snapshots import SnapshotError
from eventkit.infrastructure.errors import ConfigurationError, EventDecodingError
from eventkit.infrastructure.factory import mapper_for
from eventkit.infrastructure.log import Position
from eventkit.infrastructure.recorder import PostgresEventRecorder
from eventkit.infrastructure.subjects import PostgresSubjectKeys
from eventkit.infrastructure.transcoding import PydanticMapper
from eventkit.projections.projection import Context, Projection, Table, handles
from eventkit.projections.rebuild import rebuild


class Customer(Aggregate, type_name="tests.ShreddedCustomer"):
    personal_data = PersonalData(subject="customer_id", fields=("name", "email"))

    customer_id: str
    name: str
    email: str | None
    tier: str

    class Registered(Aggregate.Created):
        personal_data = PersonalData(subject="customer_id", fields=("name", "email"))

        customer_id: str
        name: str
        email: str | None
        tier: str

    class Renamed(Aggregate.Event):
        personal_data = PersonalData(subject="customer_id", fields=("name",))

        customer_id: str
        name: str

    @event(Registered)
    def __init__(self, customer_id: str, name: str, email: str | None, tier: str) -> None:
        self.customer_id = customer_id
        self.name = name
        self.email = email
        self.tier = tier

    @event(Renamed)
    def rename(self, customer_id: str, name: str) -> None:
        self.name = name


class Careless(Aggregate, type_name="tests.ShreddedCareless"):
    """Its events hold personal data, but it declares none for its snapshots."""

    class Made(Aggregate.Created):
        personal_data = PersonalData(subject="who", fields=("note",))

        who: str
        note: str

    @event(Made)
    def __init__(self, who: str, note: str) -> None:
        self.who = who
        self.note = note


class Customers(Application):
    is_snapshotting_enabled = True


class CustomerNames(Projection):
    name = "customer_names"
    tables = (
        Table(
            "customer_names",
            "CREATE TABLE {table} (customer_id text PRIMARY KEY, name text, tier text)",
        ),
    )

    @handles
    def registered(self, event: Customer.Registered, context: Context) -> None:
        context.execute(
            "INSERT INTO {customer_names} VALUES (%s, %s, %s)",
            (event.customer_id, event.name, event.tier),
        )

    @handles
    def renamed(self, event: Customer.Renamed, context: Context) -> None:
        context.execute(
            "UPDATE {customer_names} SET name = %s WHERE customer_id = %s",
            (event.name, event.customer_id),
        )


def register(app: Customers, customer_id: str, name: str) -> Customer:
    customer = Customer(
        customer_id=customer_id, name=name, email=f"{name.lower()}@example.org", tier="gold"
    )
    app.save(customer)
    return customer


def stored_states(
    pool: psycopg_pool.ConnectionPool, schema: str, stream: UUID
) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT state FROM {} WHERE originator_id = %s ORDER BY originator_version"
            ).format(sql.Identifier(schema, "stored_events_json")),
            (stream,),
        ).fetchall()
    return [r[0] for r in rows]


def test_personal_fields_are_stored_encrypted_and_read_in_clear(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = Customers(env=app_env)
    customer = register(app, "cust-1", "Ada")
    customer.rename(customer_id="cust-1", name="Ada L.")
    app.save(customer)

    states = stored_states(pool, schema, customer.id)
    assert set(states[0]["name"]) == {"$encrypted", "subject"}
    assert states[0]["name"]["subject"] == "cust-1"
    assert set(states[0]["email"]) == {"$encrypted", "subject"}
    assert states[0]["tier"] == "gold"  # not personal: in clear
    assert states[0]["customer_id"] == "cust-1"
    assert "Ada" not in json.dumps(states)

    loaded = app.repository.get(customer.id)
    assert (loaded.name, loaded.email, loaded.tier) == ("Ada L.", "ada@example.org", "gold")


def test_forgetting_a_subject_erases_their_fields_everywhere(
    app_env: dict[str, str], database_url: str, pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = Customers(env=app_env)
    ada = register(app, "cust-ada", "Ada")
    bob = register(app, "cust-bob", "Bob")
    ada.rename(customer_id="cust-ada", name="Ada L.")
    app.save(ada)
    app.take_snapshot(ada.id)
    snapshot_state = _snapshot_state(pool, schema, ada.id)
    assert set(snapshot_state["name"]) == {"$encrypted", "subject"}

    recorder = PostgresEventRecorder(pool, schema)
    mapper = mapper_for(pool, schema)
    assert rebuild(
        CustomerNames, url=database_url, schema=schema, recorder=recorder, mapper=mapper,
        worker_id="test",
    ).applied == 3  # fmt: skip
    assert _view(pool, schema) == [("cust-ada", "Ada L.", "gold"), ("cust-bob", "Bob", "gold")]

    assert PostgresSubjectKeys(pool, schema).forget("cust-ada")
    fresh = Customers(env=app_env)  # another process: no key cached
    loaded = fresh.repository.get(ada.id)  # from the snapshot
    assert (loaded.name, loaded.email, loaded.tier) == (ERASED, ERASED, "gold")
    assert fresh.repository.get(bob.id).name == "Bob"
    decoded = [
        fresh.mapper.to_domain_event(n) for n in recorder.read_notifications(Position.ORIGIN, 10)
    ]
    assert [getattr(e, "name", None) for e in decoded] == [ERASED, "Bob", ERASED]
    assert all(e.originator_id in (ada.id, bob.id) for e in decoded)

    fresh_mapper = mapper_for(pool, schema)
    fresh_mapper.subject_keys = PostgresSubjectKeys(pool, schema)  # nothing cached
    rebuild(
        CustomerNames, url=database_url, schema=schema, recorder=recorder, mapper=fresh_mapper,
        worker_id="test",
    )  # fmt: skip
    assert _view(pool, schema) == [("cust-ada", ERASED, "gold"), ("cust-bob", "Bob", "gold")]


def test_the_forget_command_is_a_dry_run_unless_executed(
    app_env: dict[str, str],
    pool: psycopg_pool.ConnectionPool,
    schema: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = Customers(env=app_env)
    ada = register(app, "cust-cli", "Ada")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("EVENTKIT_SCHEMA", schema)
    keys = PostgresSubjectKeys(pool, schema, ttl_s=0)
    assert eventkit_main(["forget", "cust-cli", "nobody"]) == 0
    out = capsys.readouterr().out
    assert "would forget 'cust-cli'" in out
    assert "no key for 'nobody'" in out
    assert "dry run" in out
    assert keys.key("cust-cli", create=False) is not None
    assert eventkit_main(["forget", "cust-cli", "--execute"]) == 0
    assert "forgot 1 subject(s)" in capsys.readouterr().out
    assert keys.key("cust-cli", create=False) is None
    reader = PydanticMapper(subject_keys=keys)
    stored = PostgresEventRecorder(pool, schema).select_events(ada.id)
    assert reader.to_domain_event(stored[0]).name == ERASED  # type: ignore[attr-defined]


def test_a_changed_ciphertext_fails_naming_the_event(
    app_env: dict[str, str], pool: psycopg_pool.ConnectionPool, schema: str
) -> None:
    app = Customers(env=app_env)
    customer = register(app, "cust-t", "Tam")
    with pool.connection() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET state = convert_to(jsonb_set(convert_from(state, 'UTF8')::jsonb,"
                " '{{name,$encrypted}}', to_jsonb(%s::text))::text, 'UTF8')"
            ).format(sql.Identifier(schema, "stored_events")),
            ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",),
        )
    with pytest.raises(EventDecodingError, match=f"stream {customer.id} version 1"):
        Customers(env=app_env).repository.get(customer.id)


def test_personal_events_need_a_mapper_with_keys(app_env: dict[str, str]) -> None:
    app = Customers(env=app_env)
    customer = register(app, "cust-k", "Kim")
    stored = app.recorder.select_events(customer.id)
    with pytest.raises(ConfigurationError, match="subject keys"):
        PydanticMapper().to_domain_event(stored[0])
    unsaved = Customer(customer_id="c", name="n", email=None, tier="t")
    with pytest.raises(ConfigurationError, match="subject keys"):
        PydanticMapper().to_stored_event(unsaved.collect_events()[0])


def test_an_aggregate_must_declare_personal_state_to_be_snapshotted(
    app_env: dict[str, str],
) -> None:
    app = Customers(env=app_env)
    careless = Careless(who="cust-c", note="private")
    app.save(careless)
    with pytest.raises(SnapshotError, match="declare which attributes"):
        app.take_snapshot(careless.id)


def test_personal_data_is_checked_where_the_class_is_defined() -> None:
    with pytest.raises(PersonalDataError, match="accepts neither"):

        class Counted(Aggregate.Event):
            personal_data: ClassVar[PersonalData | None] = PersonalData(
                subject="who", fields=("n",)
            )
            who: str
            n: int

    with pytest.raises(PersonalDataError, match="subject field 'whom'"):

        class Named(Aggregate.Event):
            personal_data: ClassVar[PersonalData | None] = PersonalData(
                subject="whom", fields=("name",)
            )
            name: str

    with pytest.raises(PersonalDataError, match="stored in clear"):
        PersonalData(subject="a", fields=("a",))


def test_in_memory_applications_encrypt_with_keys_in_memory(
    eventkit_memory_env: dict[str, str],
) -> None:
    app = Customers(env=eventkit_memory_env)
    customer = register(app, "cust-m", "Mo")
    assert app.repository.get(customer.id).name == "Mo"
    assert app.mapper.subject_keys.forget("cust-m")  # type: ignore[attr-defined]
    assert app.repository.get(customer.id).name == ERASED


def _snapshot_state(pool: psycopg_pool.ConnectionPool, schema: str, stream: UUID) -> Any:
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT state->'state' FROM {} WHERE originator_id = %s").format(
                sql.Identifier(schema, "snapshots_json")
            ),
            (stream,),
        ).fetchone()
    assert row is not None
    return row[0]


def _view(pool: psycopg_pool.ConnectionPool, schema: str) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(
            sql.SQL("SELECT customer_id, name, tier FROM {} ORDER BY customer_id").format(
                sql.Identifier(schema, "customer_names")
            )
        ).fetchall()


def test_unrelated_streams_are_untouched(app_env: dict[str, str]) -> None:
    app = Customers(env=app_env)
    a, b = register(app, str(uuid4()), "A"), register(app, str(uuid4()), "B")
    assert app.mapper.subject_keys.forget(a.customer_id)  # type: ignore[attr-defined]
    assert Customers(env=app_env).repository.get(b.id).name == "B"
