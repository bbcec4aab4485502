"""Placeholders for libpq: psycopg's %s become $n, except inside quotes."""

from eventkit.infrastructure.libpq import numbered


def test_placeholders_are_numbered_in_order() -> None:
    assert numbered("SELECT %s, %s FROM t WHERE a = %s") == "SELECT $1, $2 FROM t WHERE a = $3"


def test_quoted_identifiers_and_literals_keep_their_percent_s() -> None:
    query = """SELECT "col%s", 'it''s %s', %s FROM "a""%s" WHERE b = %s"""
    assert numbered(query) == """SELECT "col%s", 'it''s %s', $1 FROM "a""%s" WHERE b = $2"""
