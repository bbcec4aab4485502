"""``eventkit dlq``: list, show, retry and discard dead letters."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import Any
from uuid import UUID

import psycopg

from eventkit.cli.common import (
    CommandFailed,
    add_json,
    app_of,
    confirm,
    count,
    print_json,
    seconds,
    settings_of,
)
from eventkit.infrastructure.broker import Handover, broker_kind
from eventkit.infrastructure.deadletters import DeadLetter, DeadLetters, Selector
from eventkit.infrastructure.errors import UsageError
from eventkit.infrastructure.factory import existing_pool
from eventkit.infrastructure.leases import Leases
from eventkit.infrastructure.partitions import recorded_partitions
from eventkit.projections.app import Runtime
from eventkit.projections.reactor import executed, requeue_dead_letters
from eventkit.runner import default_worker_id, follower_factory, follower_options


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "dlq", parents=parents, help="dead letters: list, show, retry, discard"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=parents, help="open dead letters")
    _consumer_option(listing, "of this projection or reaction")
    listing.add_argument("--all", action="store_true", help="also retried and discarded ones")
    add_json(listing)
    listing.set_defaults(run=_list)
    show = actions.add_parser("show", parents=parents, help="one dead letter with its traceback")
    show.add_argument("dead_letter_id", type=count, metavar="ID")
    add_json(show)
    show.set_defaults(run=_show)
    for name, run, text in [
        ("retry", _retry, "reprocess the selected streams in order and release them"),
        ("discard", _discard, "give up on the selected dead letters"),
    ]:
        action = actions.add_parser(name, parents=parents, help=text)
        action.add_argument("dead_letter_id", nargs="?", type=count, metavar="ID")
        action.add_argument("--stream", type=UUID, help="every dead letter of this stream")
        _consumer_option(action, "every dead letter of this projection or reaction")
        if name == "discard":
            action.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        else:
            action.add_argument(
                "--timeout",
                type=seconds,
                default=30.0,
                metavar="SECONDS",
                help="how long to wait for the retries (default %(default)s)",
            )
        action.set_defaults(run=run)


#: Every status a dead letter can have.
ALL_STATUSES = ("parked", "retry_requested", "retried", "discarded")


def _consumer_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--consumer", "--projection", "--reaction", dest="consumer", metavar="NAME", help=text
    )


def _known_consumer(args: argparse.Namespace, conn: Any, store: DeadLetters) -> None:
    """Refuse a ``--consumer`` that the application does not declare and that has no dead
    letters either (one the application dropped may still have some)."""
    name = args.consumer
    if name is None or name in app_of(args).names():
        return
    if not store.select(conn, consumer=name, statuses=ALL_STATUSES, limit=1):
        app_of(args).consumer(name)  # raises, naming the consumers there are


def _selector(args: argparse.Namespace, conn: Any, store: DeadLetters) -> Selector:
    if args.dead_letter_id is None and args.stream is None and args.consumer is None:
        raise UsageError("name a dead letter ID, --stream S or --consumer NAME")
    _known_consumer(args, conn, store)
    if args.dead_letter_id is not None and store.get(conn, args.dead_letter_id) is None:
        raise CommandFailed(f"no dead letter #{args.dead_letter_id} in schema {store.schema}")
    return Selector(args.dead_letter_id, args.stream, args.consumer)


def _list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    pool, _ = existing_pool(settings)
    store = DeadLetters(settings.schema)
    with pool.connection() as conn:
        _known_consumer(args, conn, store)
        letters = (
            store.select(conn, consumer=args.consumer, statuses=ALL_STATUSES)
            if args.all
            else store.select(conn, consumer=args.consumer)
        )
    if args.json:
        print_json([asdict(letter) for letter in letters])
        return 0
    if not letters:
        print("no dead letters")
    for letter in letters:
        print(letter.summary())
    return 0


def _show(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    pool, _ = existing_pool(settings)
    with pool.connection() as conn:
        letter = DeadLetters(settings.schema).get(conn, args.dead_letter_id)
    if letter is None:
        raise CommandFailed(f"no dead letter #{args.dead_letter_id} in schema {settings.schema}")
    if args.json:
        print_json(asdict(letter))
        return 0
    print(letter.summary())
    print(f"recorded {letter.created_at}, updated {letter.updated_at}")
    if letter.traceback:
        print(letter.traceback.rstrip())
    return 0


def _retry(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    pool, url = existing_pool(settings)
    store = DeadLetters(settings.schema)
    handover = Handover(broker_kind(settings.broker_url), settings.schema)
    with pool.connection() as conn:
        selector = _selector(args, conn, store)
        messages = requeue_dead_letters(conn, settings.schema, handover, selector)
        requested = store.request_retry(conn, selector)
        waiting = store.select(conn, consumer=args.consumer, statuses=("retry_requested",))
    if requested == 0 and not messages:
        raise CommandFailed("nothing to retry: no parked dead letters match")
    ok = True
    if messages:
        ok = _wait_for_messages(pool, settings.schema, messages, args.timeout)
    if requested == 0:
        return 0 if ok else 1
    projections = sorted({d.consumer for d in waiting})
    print(f"{requested} dead letter(s) of {', '.join(projections)} queued for retry")
    # Where no worker owns a projection this command knows, process its retries here,
    # under the leases of all its partitions; otherwise its workers do, and we wait.
    app = app_of(args)
    runtime = Runtime(app, settings)
    known = [p for p in app.projections if p.name in projections]
    owner = f"dlq:{default_worker_id()}"
    leases = Leases(settings.schema)
    options = follower_options(settings, worker_id=owner)
    make = follower_factory(options, construct=runtime.construct)
    for projection in known:
        follower = make(projection, 0, 1)  # one partition: every stream's letters
        with psycopg.connect(url, autocommit=True) as conn:
            count = recorded_partitions(conn, settings.schema).get(
                projection.name, projection.partitions
            )
            held = [leases.acquire(conn, projection.name, k, owner) for k in range(count)]
            try:
                if all(held):
                    follower.process_retries(conn)
            finally:
                for lease in held:
                    if lease is not None:
                        leases.release(conn, lease)
    deadline = time.monotonic() + args.timeout
    while True:
        with pool.connection() as conn:
            left = [
                d
                for d in store.select(conn, statuses=("retry_requested",))
                if d.dead_letter_id in {w.dead_letter_id for w in waiting}
            ]
            after = [store.get(conn, d.dead_letter_id) for d in waiting]
        if not left:
            break
        if time.monotonic() > deadline:
            print(f"{len(left)} dead letter(s) still wait for their worker after {args.timeout} s")
            return 1
        time.sleep(0.2)
    failed = [d for d in after if d is not None and d.status == "parked"]
    retried = [d for d in after if d is not None and d.status == "retried"]
    print(f"retried {len(retried)}; still parked {len(failed)}")
    for d in failed:
        print("  " + d.summary())
    return 0 if not failed and ok else 1


def _wait_for_messages(pool: Any, schema: str, letters: list[DeadLetter], timeout: float) -> bool:
    """Wait until each requeued reaction message has run, or been parked again."""
    names = sorted({d.consumer for d in letters})
    print(
        f"{len(letters)} reaction message(s) of {', '.join(names)} queued again; the reaction "
        "workers run them"
    )
    store = DeadLetters(schema)
    ids = {d.message_id: d.dead_letter_id for d in letters if d.message_id is not None}
    deadline = time.monotonic() + timeout
    while True:
        with pool.connection() as conn:
            done = executed(conn, schema, list(ids))
            again = [
                d
                for d in (store.get(conn, i) for i in ids.values())
                if d is not None and d.status == "parked"
            ]
        if len(done) + len(again) >= len(ids):
            break
        if time.monotonic() > deadline:
            print(
                f"{len(ids) - len(done) - len(again)} reaction message(s) not run within "
                f"{timeout} s: are reaction workers running (`eventkit workers`)?"
            )
            return False
        time.sleep(0.2)
    print(f"reaction messages run: {len(done)}; failed again and parked: {len(again)}")
    for d in again:
        print("  " + d.summary())
    return not again


def _discard(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    pool, _ = existing_pool(settings)
    store = DeadLetters(settings.schema)
    with pool.connection() as conn:
        selector = _selector(args, conn, store)
    if not confirm("discard the selected dead letters for good?", yes=args.yes):
        print("nothing discarded")
        return 1
    with pool.connection() as conn:
        discarded = store.discard(conn, selector)
    if discarded == 0:
        raise CommandFailed("nothing to discard: no parked dead letters match")
    print(f"discarded {discarded} dead letter(s)")
    return 0
