"""The `.enclip/` workspace: where embedded collections, trained bundles and defaults live.

Defaults (the last collection indexed, the bundle each collection was built with) are kept in a small
JSON file so that `enclip-qdrant query "..."` works right after `enclip-qdrant index ./catalog`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import EnclipError
from .files import atomic_write_json, locked, read_json

ENV_HOME = "ENCLIP_HOME"
STATE = "state.json"


def resolve_home(home: str | Path | None = None) -> Path:
    return Path(home or os.environ.get(ENV_HOME) or Path.cwd() / ".enclip").expanduser().resolve()


def collection_name_for(catalog_root: Path) -> str:
    """Default collection name: the catalog folder's name, made safe for Qdrant and folders."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", catalog_root.resolve().name).strip("-.") or "catalog"
    return name


class Workspace:
    def __init__(self, home: str | Path | None = None):
        self.home = resolve_home(home)

    @property
    def bundles(self) -> Path:
        return self.home / "bundles"

    def default_bundle_dir(self, name: str) -> Path:
        return self.bundles / name

    def _state(self) -> dict[str, Any]:
        """The defaults; a missing, torn or malformed file reads as none (they are re-recorded by `index`)."""
        state = read_json(self.home / STATE)
        if not isinstance(state, dict):
            state = {}
        if not isinstance(state.get("collections"), dict):
            state["collections"] = {}
        return state

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.home / STATE, state)

    def remember(self, collection: str, bundle: Path, location: str, *, physical: str | None = None,
                 previous: str | None = None, default: bool = True) -> None:
        """`physical`/`previous`: what the alias `collection` serves now and served before (for rollback).

        Read-modify-write under a lock, so two processes indexing at once both keep their entries."""
        with locked(self.home / STATE, what=f"the workspace {self.home}"):
            state = self._state()
            if default:
                state["default_collection"] = collection
            entry = {"bundle": str(Path(bundle).resolve()), "store": location}
            old = state["collections"].get(collection) or {}
            if not isinstance(old, dict):
                old = {}
            if physical:  # an incremental run (no switch) keeps the recorded rollback target
                kept = old.get("previous") if old.get("collection") == physical else None
                entry |= {"collection": physical, "previous": previous or kept}
            state["collections"][collection] = entry
            self._save(state)

    def default_collection(self) -> str:
        name = self._state().get("default_collection")
        if not name or not isinstance(name, str):
            raise EnclipError("no collection yet: run `enclip-qdrant index CATALOG` first, or pass --collection")
        return name

    def entry(self, collection: str) -> dict[str, Any]:
        entry = self._state()["collections"].get(collection)
        return dict(entry) if isinstance(entry, dict) else {}

    def bundle_for(self, collection: str) -> Path | None:
        entry = self._state()["collections"].get(collection)
        bundle = entry.get("bundle") if isinstance(entry, dict) else None
        return Path(bundle) if isinstance(bundle, str) else None
