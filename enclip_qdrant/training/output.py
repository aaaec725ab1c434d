"""The output folder: what is ours to replace, what a rerun may resume, what must never be touched."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enclip_qdrant.bundle.manifest import FORMAT
from enclip_qdrant.bundle.names import CLUSTERS, MANIFEST, PLAN
from enclip_qdrant.errors import BundleError
from enclip_qdrant.files import read_json
from enclip_qdrant.progress import Progress
from enclip_qdrant.training.config import LEGACY_DEFAULTS

# What a training run writes in its folder: the only entries `--overwrite` ever removes.
# "text_features.safetensors" is text_cache.TEXT_CACHE; the last two are image_cache's CACHE_DATA and CACHE_INDEX.
_OURS = (PLAN, MANIFEST, CLUSTERS, "members", "text_features.safetensors", "image_cache.u8", "image_cache.safetensors")

# A second run training into the same folder gets a clear "busy" error at once rather than waiting for a
# training that can take an hour; it is never allowed to write beside the first.
TRAIN_LOCK_TIMEOUT = 2.0


def _is_tmp(name: str) -> bool:
    return name.endswith(".tmp")  # files.py's per-process temp files, and older fixed-name ones


def _valid_plan(plan: Any) -> bool:
    return isinstance(plan, dict) and isinstance(plan.get("catalog_fingerprint"), str) \
        and isinstance(plan.get("config"), dict) and isinstance(plan.get("train_ids"), list)


def _our_manifest(out: Path) -> bool:
    manifest = read_json(out / MANIFEST)
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _ownership(out: Path) -> str:
    """"empty", "run" (a readable plan of ours), "torn" (a plan that does not read back, in a folder holding
    nothing but our layout: a run of ours interrupted mid-write), "bundle" (our manifest, no plan), or
    "foreign": anything else, which is never deleted."""
    if not out.exists():
        return "empty"
    if not out.is_dir():
        return "foreign"
    entries = [e.name for e in out.iterdir()]
    if not entries:
        return "empty"
    plan_file = out / PLAN
    plan = read_json(plan_file) if plan_file.is_file() else None
    if _valid_plan(plan):
        return "run"
    only_our_layout = all(n in _OURS or _is_tmp(n) for n in entries)
    if plan_file.is_file() and plan is None and only_our_layout:  # JSON of another shape is not our plan
        return "torn"
    if _our_manifest(out) and only_our_layout:
        return "bundle"
    return "foreign"


def refuse_protected(out: Path, protected: Sequence[tuple[str, Path]]) -> None:
    """--out may never be (or contain) the catalog or the workspace: training writes there and
    --overwrite deletes there."""
    real = out.resolve()
    for what, path in protected:
        p = Path(path).resolve()
        if real == p or p.is_relative_to(real):
            raise BundleError(f"--out {out} is {'the' if real == p else 'a folder holding the'} {what}: "
                              "choose another --out for the bundle")


def _remove_ours(out: Path) -> None:
    """Delete a previous run's files: only the entries a training run writes, never the folder's other files."""
    for entry in out.iterdir():
        if entry.name in _OURS or _is_tmp(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def refuse_foreign(out: Path) -> str:
    """`out`'s ownership, refusing a folder enclip did not make. Called before the run's lock is taken too, so
    a refused `--out` leaves nothing behind (no `out.lock` beside someone else's folder)."""
    state = _ownership(out)
    if state == "foreign":
        raise BundleError(f"{out} exists and is not an enclip bundle or training run (it holds other files); "
                          "pick another --out: enclip only deletes folders it made")
    return state


def prepare_output(out: Path, fingerprint: str, wanted: dict[str, Any], overwrite: bool, progress: Progress) -> None:
    """Resume a matching run, restart one of ours with --overwrite, or refuse; foreign folders are never touched."""
    state = refuse_foreign(out)
    if state == "run" and not overwrite:
        plan = read_json(out / PLAN)
        if plan["catalog_fingerprint"] != fingerprint or LEGACY_DEFAULTS | plan["config"] != wanted:
            raise BundleError(f"{out} holds a training run with another catalog or settings; "
                              "pass --overwrite to replace it or choose another --out")
        progress.log(f"resuming the training run in {out}")
        return
    if state == "torn" and not overwrite:
        raise BundleError(f"{out} holds an interrupted training run whose plan ({PLAN}) is unreadable; "
                          "pass --overwrite to restart it cleanly or choose another --out")
    if state == "bundle" and not overwrite:
        raise BundleError(f"{out} holds an enclip bundle without its training plan; "
                          "pass --overwrite to replace it or choose another --out")
    if state != "empty":
        progress.log(f"replacing the previous training run in {out}")
        _remove_ours(out)
