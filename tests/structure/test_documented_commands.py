"""Every command the documentation shows exists, with every flag it is shown with, and explains itself: a renamed
verb or option fails here instead of in a reader's terminal (after sqlite-utils' test of its documented commands)."""

from __future__ import annotations

import re

import pytest
import typer
from paths import ROOT
from typer.testing import CliRunner

from enclip_qdrant.cli.app import app

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
GROUP = typer.main.get_command(app)
# one shown command: the verb and what follows it up to the end of the code span, a comment or a shell operator
SHOWN = re.compile(r"enclip-qdrant ([a-z][a-z-]*)([^`#\n&|;]*)")


def _code(line: str, fenced: bool) -> list[str]:
    """The code on a line: all of it inside a fenced block, else its `inline spans` (prose is not a command)."""
    return [line] if fenced else re.findall(r"`([^`]+)`", line)


def _shown() -> list[tuple[str, str, frozenset[str]]]:
    found = []
    for doc in DOCS:
        fenced = False
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            for verb, rest in (m for code in _code(line, fenced) for m in SHOWN.findall(code)):
                flags = frozenset(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest))
                found.append((f"{doc.name}:{n}", verb, flags))
    return found


SHOWN_COMMANDS = _shown()


def test_the_documentation_shows_commands() -> None:
    assert len({verb for _, verb, _ in SHOWN_COMMANDS}) >= 8  # the scan itself works


@pytest.mark.parametrize(("where", "verb", "flags"), SHOWN_COMMANDS, ids=[w for w, _, _ in SHOWN_COMMANDS])
def test_a_documented_command_exists_with_its_flags(where: str, verb: str, flags: frozenset[str]) -> None:
    assert verb in GROUP.commands, f"{where}: `enclip-qdrant {verb}` is not a command"
    known = {"--help"} | {o for p in GROUP.commands[verb].params for o in (*p.opts, *p.secondary_opts)}
    assert flags <= known, f"{where}: `enclip-qdrant {verb}` has no {sorted(flags - known)}"


@pytest.mark.parametrize("verb", sorted({verb for _, verb, _ in SHOWN_COMMANDS}))
def test_a_documented_command_has_help(verb: str) -> None:
    r = CliRunner().invoke(app, [verb, "--help"], terminal_width=120)
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output and (GROUP.commands[verb].help or "").strip(), f"{verb} has no help text"
