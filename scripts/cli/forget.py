"""``eventkit forget SUBJECT ...``: crypto-shred data subjects (the GDPR's erasure).

Deletes each subject's key: every stored copy of their personal fields (events, snapshots)
becomes unreadable for good, and reads as its placeholder. A dry run unless ``--execute``.
Views that copied those fields keep their copies until rebuilt: the command names the
projections that read events with personal data.
"""

from __future__ import annotations

import argparse
from typing import Any

from psycopg import sql

from eventkit.cli.common import app_of, describe_app, settings_of
from eventkit.domain.names import EVENT_TYPES
from eventkit.infrastructure.errors import EventkitError
from eventkit.infrastructure.factory import existing_pool
from eventkit.infrastructure.subjects import shared_subject_keys


def register(commands: Any, parents: list[argparse.ArgumentParser], app_spec: str | None) -> None:
    parser = commands.add_parser(
        "forget",
        parents=parents,
        help="crypto-shred data subjects: delete their keys, so their personal data in "
        "events and snapshots can never be read again",
        description="Delete the keys of the given data subjects (the ids events name in "
        "their personal_data's subject field). Their personal fields then read as "
        "'<erased>' everywhere (events, snapshots, rebuilds) while the rest of each event "
        "loads as before. There is no undo. Views that copied the fields keep them until "
        "rebuilt: the projections that read personal data are listed. A dry run unless "
        "--execute is given. " + describe_app(app_spec),
    )
    parser.add_argument("subjects", metavar="SUBJECT", nargs="+", help="a data subject's id")
    parser.add_argument(
        "--execute", action="store_true", help="delete the keys (default: a dry run)"
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    pool, _ = existing_pool(settings)
    table = sql.Identifier(settings.schema, "subject_keys")
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT subject, created_at FROM {} WHERE subject = ANY(%s)").format(table),
            (list(args.subjects),),
        ).fetchall()
    known = {r[0]: r[1] for r in rows}
    for subject in args.subjects:
        if subject in known:
            verb = "forgetting" if args.execute else "would forget"
            print(f"{verb} {subject!r} (key made {known[subject]:%Y-%m-%d %H:%M:%S %Z})")
        else:
            print(f"no key for {subject!r}: nothing of theirs is encrypted (or it is forgotten)")
    if args.execute:
        keys = shared_subject_keys(pool, settings.schema)
        forgotten = sum(keys.forget(subject) for subject in known)
        print(f"forgot {forgotten} subject(s): their personal fields now read as '<erased>'")
    else:
        print("dry run: nothing deleted; run again with --execute")
    readers = _personal_readers(args)
    if readers:
        print(
            "projections that read events with personal data (their views may hold copies; "
            f"rebuild them with eventkit rebuild NAME): {', '.join(readers)}"
        )
    return 0


def _personal_readers(args: argparse.Namespace) -> list[str]:
    """The application's projections that handle events declaring personal data."""
    try:
        app = app_of(args)
    except EventkitError:
        return []
    names = []
    for projection in app.projections:
        for handled in projection.event_types():
            if any(
                getattr(cls, "personal_data", None) is not None
                for cls in EVENT_TYPES.subclasses(handled)
            ):
                names.append(projection.name)
                break
    return names
