"""Table or folder rows -> candidate products (id, image, text, fields); bad rows become recorded skips."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclip_qdrant.catalog.columns import IMAGE_COLUMNS, delimiter_hint
from enclip_qdrant.catalog.model import IMAGE_EXTENSIONS, UNREADABLE_ROW, Columns, Skipped
from enclip_qdrant.catalog.tables import MISSING_TOKENS, TableRow
from enclip_qdrant.errors import CatalogError

# --------------------------------------------------------------------------- rows -> candidates


@dataclass(frozen=True)
class RowCandidate:
    row: int | None
    ref: str
    id: str | None  # None: use image_rel
    image: str  # lexical absolute path (symlinks resolved after the file is read)
    image_rel: str
    text: str | None
    fields: dict[str, Any]


def _scalar(v: Any) -> Any:
    """Payload values must be JSON-able scalars: drop blanks/NaN, flatten anything nested to JSON."""
    if v is None or isinstance(v, bool | int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        v = v.strip()
        return None if v.lower() in MISSING_TOKENS else v
    if isinstance(v, bytes):
        return None
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, ensure_ascii=False, default=str)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _id_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        if v.is_integer():
            v = int(v)
    s = str(v).strip()
    return s or None


def _text_str(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    s = str(v).strip()
    return s or None


def _place(bases: tuple[str, ...], value: str) -> tuple[str, str] | None:
    """Where an image path points, checked lexically so `..` and outside paths cannot escape.

    Lexical (not resolved) so a catalog whose images/ is a symlink to another disk still works.
    String ops rather than pathlib: this runs once per row and pathlib is the slow part at 10k rows.
    """
    value = value.replace("\\", "/")
    full = os.path.normpath(os.path.join(bases[0], value))
    for base in bases:
        prefix = base.rstrip(os.sep) + os.sep
        if full.startswith(prefix) and len(full) > len(prefix):
            return full, full[len(prefix) :].replace(os.sep, "/")
    return None


def _id_image(bases: tuple[str, ...], ident: str, layout: list[tuple[str, str]]) -> tuple[str, str] | None:
    """Find `<root>/images/<id>.<ext>` or `<root>/<id>.<ext>`, trying the layout that worked last first."""
    if "/" in ident or "\\" in ident or ident in (".", ".."):
        return None
    for i, (folder, ext) in enumerate(layout):
        rel = f"{folder}{ident}{ext}"
        full = os.path.join(bases[0], rel)
        if os.path.isfile(full):
            if i:
                layout.insert(0, layout.pop(i))
            return full, rel
    return None


def table_rows(
    bases: tuple[str, ...], table: Path, header: list[str], rows: list[TableRow], columns: Columns, require_text: bool
) -> tuple[list[RowCandidate], list[Skipped]]:
    skipped: list[Skipped] = []
    candidates: list[RowCandidate] = []
    used = {c for c in (columns.image, columns.text, columns.id) if c is not None}
    layout = [(folder, ext) for folder in ("images/", "") for ext in IMAGE_EXTENSIONS]
    layout += [(folder, ext.upper()) for folder, ext in list(layout)]

    if columns.image is None:
        if columns.id is None:
            raise CatalogError(
                f"{table.name} has no image column (looked for {', '.join(IMAGE_COLUMNS)}) and no id "
                f"column to find images by: pass --image-col (or --id-col); available columns: "
                f"{', '.join(header)}{delimiter_hint(header)}"
            )
        ids = (_id_str(r.values.get(columns.id)) for r in rows if r.values is not None)
        if not any(i is not None and _id_image(bases, i, layout) for i in ids):
            raise CatalogError(
                f"{table.name} has no image column (looked for {', '.join(IMAGE_COLUMNS)}) and no image "
                f"is at images/<{columns.id}>.jpg or <{columns.id}>.jpg; pass the image column with "
                f"--image-col. Available columns: {', '.join(header)}"
            )

    for r in rows:
        if r.values is None:
            skipped.append(Skipped(r.number, r.ref, r.error or "malformed row"))
            continue
        vals = r.values
        ident = _id_str(vals.get(columns.id)) if columns.id else None
        if columns.id and ident is None:
            skipped.append(Skipped(r.number, r.ref, "missing id"))
            continue
        text = _text_str(vals.get(columns.text)) if columns.text else None

        if columns.image is not None:
            raw = _text_str(vals.get(columns.image))
            ref = ident or raw or r.ref
            if raw is None:
                skipped.append(Skipped(r.number, ref, "missing image"))
                continue
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", raw):
                skipped.append(Skipped(r.number, ref, "remote image"))
                continue
            placed = _place(bases, raw)
            if placed is None:
                skipped.append(Skipped(r.number, ref, "path escapes catalog"))
                continue
            # A bare file name with the files under images/ is common enough to forgive.
            if "/" not in raw.replace("\\", "/") and not os.path.exists(placed[0]):
                alt = _place(bases, f"images/{raw}")
                if alt is not None and os.path.isfile(alt[0]):
                    placed = alt
        else:
            assert ident is not None
            ref = ident
            found = _id_image(bases, ident, layout)
            if found is None:
                skipped.append(Skipped(r.number, ref, "missing image"))
                continue
            placed = found

        if text is None and require_text:
            skipped.append(Skipped(r.number, ref, "empty text"))
            continue
        fields = {k: s for k, v in vals.items() if k and k not in used and (s := _scalar(v)) is not None}
        candidates.append(RowCandidate(r.number, ref, ident, placed[0], placed[1], text, fields))
    return candidates, skipped


def folder_rows(root: Path) -> tuple[list[RowCandidate], list[Skipped]]:
    candidates: list[RowCandidate] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(root).as_posix()
            ident = rel.rsplit(".", 1)[0]
            candidates.append(RowCandidate(None, rel, ident, full, rel, None, {}))
    candidates.sort(key=lambda c: c.image_rel)
    if not candidates:
        raise CatalogError(f"{root} has neither a table (csv/jsonl/parquet) nor images ({', '.join(IMAGE_EXTENSIONS)})")
    return candidates, []


def row_has_id(s: Skipped, columns: Columns) -> bool:
    """A skipped row's ref is its product id when the table has an id column and the row had one."""
    return columns.id is not None and s.reason not in UNREADABLE_ROW and s.reason != "missing id"
