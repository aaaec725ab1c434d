"""Opening a catalog for a verb (train, index, evaluate): from a path with a progress bar over the image
checks, its skipped rows summarised. Its own module so `api` and `evaluation` share it without importing
each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from enclip_qdrant.catalog.load import load_catalog
from enclip_qdrant.catalog.model import Catalog
from enclip_qdrant.progress import Progress


def open_catalog(catalog: str | Path | Catalog, columns: Mapping[str, str | None] | None, require_text: bool,
             progress: Progress) -> Catalog:
    """A catalog from a path (with a progress bar over the image checks), its skipped rows summarised."""
    cat = catalog if isinstance(catalog, Catalog) else _load_catalog(catalog, columns, require_text, progress)
    if cat.skipped:
        progress.log(f"catalog: {cat.summary()}")
    return cat


def _load_catalog(catalog: str | Path, columns: Mapping[str, str | None] | None, require_text: bool,
                  progress: Progress) -> Catalog:
    task, seen = None, 0

    def tick(done: int, total: int) -> None:
        nonlocal task, seen
        if task is None:
            task = progress.task("reading catalog images", total=total)
        task.advance(done - seen)
        seen = done

    try:
        return load_catalog(catalog, require_text=require_text, progress=tick, **(columns or {}))
    finally:
        if task is not None:
            task.close()
