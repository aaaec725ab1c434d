"""The CLI is a thin shell: it imports only the library's public API, and its cheap commands load no models."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

import enclip_qdrant
from enclip_qdrant import api

CLI = ROOT / "cli"
PUBLIC_MODULES = {"enclip_qdrant", "enclip_qdrant.api"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_cli_imports_only_the_public_api(path: Path) -> None:
    for module, names in _imports(path):
        if module == "enclip_qdrant" or module.startswith("enclip_qdrant."):
            assert module in PUBLIC_MODULES, f"{path.name} imports {module}: use enclip_qdrant's public names"
            public = set(enclip_qdrant.__all__) | {"api"} if module == "enclip_qdrant" else set(api.__all__)
            assert set(names) <= public, f"{path.name} imports private {sorted(set(names) - public)} from {module}"


def _loaded_after(args: list[str], home: Path) -> list[str]:
    code = (
        "import sys\n"
        "from enclip_qdrant.cli.app import main\n"
        f"sys.argv = ['enclip-qdrant', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', *[m for m in ('torch', 'open_clip') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"ENCLIP_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    line = [x for x in r.stdout.splitlines() if x.startswith("LOADED")]
    assert line, r.stdout + r.stderr
    return line[-1].split()[1:]


@pytest.mark.parametrize("args", [["--help"], ["info"], ["rollback"], ["query", "--top-k", "zero"],
                                  ["index", "--help"]], ids=" ".join)
def test_cheap_commands_load_no_models(args: list[str], tmp_path: Path) -> None:
    assert _loaded_after(args, tmp_path / "home") == []
