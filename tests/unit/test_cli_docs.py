"""docs/operations.md documents every flag of every command, and README.md gives no flag
that the commands do not take (issue 14, point 12): read from the argparse parsers
themselves, so the documentation cannot drift from the commands."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventkit.cli import COMMANDS, build_parser, global_options

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
README = (ROOT / "README.md").read_text()
GLOBAL = {o for a in global_options(suppress=False)._actions for o in a.option_strings}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def flags(parser: argparse.ArgumentParser) -> Iterator[tuple[str, ...]]:
    """The long options of ``parser`` and of its sub-commands, less the global ones: one
    tuple per option, with its other spellings (``--consumer``, ``--projection``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from flags(sub)
        spellings = tuple(
            o for o in action.option_strings if o.startswith("--") and o not in GLOBAL
        )
        if spellings and spellings != ("--help",):
            yield spellings


def command_flags(command: str) -> list[tuple[str, ...]]:
    parser = build_parser([command])
    chosen = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        command
    ]
    return list(flags(chosen))


def spellings(command: str) -> set[str]:
    return {o for options in command_flags(command) for o in options}


def synopsis(text: str, command: str) -> str:
    """The synopsis lines of ``command`` in ``text``'s code blocks: lines that start
    ``eventkit COMMAND`` and the indented lines that continue them."""
    lines: list[str] = []
    in_code = taking = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code, taking = not in_code, False
            continue
        if not in_code:
            continue
        if line.startswith(f"eventkit {command} ") or line == f"eventkit {command}":
            taking = True
        elif not (taking and line.startswith(" ")):
            taking = False
        if taking:
            lines.append(line.split("  #", 1)[0])
    return "\n".join(lines)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_operations_documents_every_flag_of_every_command(command: str) -> None:
    documented = set(FLAG.findall(synopsis(OPERATIONS, command)))
    missing = [o[0] for o in command_flags(command) if not documented.intersection(o)]
    assert not missing, f"docs/operations.md: eventkit {command} lacks {sorted(missing)}"
    unknown = documented - spellings(command) - GLOBAL
    assert not unknown, f"docs/operations.md: eventkit {command} has no {sorted(unknown)}"


def test_readme_gives_only_flags_the_commands_take() -> None:
    for row in re.findall(r"\| `eventkit ([a-z]+)([^`]*)`", README):
        command, rest = row
        assert command in COMMANDS, row
        unknown = set(FLAG.findall(rest)) - spellings(command) - GLOBAL
        assert not unknown, f"README.md: eventkit {command} has no {sorted(unknown)}"


def test_readme_and_operations_give_rebuild_the_same_flags() -> None:
    readme = re.search(r"`eventkit rebuild ([^`]*)`", README)
    assert readme is not None
    assert set(FLAG.findall(readme.group(1))) == set(FLAG.findall(synopsis(OPERATIONS, "rebuild")))
