"""``eventkit`` commands run inside the demo, as an operator would type them."""

from __future__ import annotations

import contextlib
import io
import os
import textwrap
from collections.abc import Iterator


@contextlib.contextmanager
def cli_env(url: str, schema: str) -> Iterator[None]:
    """Point in-process ``eventkit`` commands at the demo's database and schema."""
    saved = {name: os.environ.get(name) for name in ("DATABASE_URL", "EVENTKIT_SCHEMA")}
    os.environ.update(DATABASE_URL=url, EVENTKIT_SCHEMA=schema)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def eventkit(*argv: str) -> int:
    """Run an ``eventkit`` command in this process; print it and its output, indented."""
    from eventkit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--app", "eventkit.projections.shop:app", *argv])
    print(f"  $ eventkit {' '.join(argv)}")
    print(textwrap.indent(out.getvalue().rstrip(), "    "))
    return code
