"""load_catalog: a folder (+ table) -> a Catalog, bad rows skipped and recorded, never raised one by one."""

from __future__ import annotations

import os
from pathlib import Path

from enclip_qdrant.catalog.checks import check_images, dedupe
from enclip_qdrant.catalog.columns import TEXT_COLUMNS, delimiter_hint, detect_columns
from enclip_qdrant.catalog.model import UNREADABLE_ROW, Catalog, Columns, Progress
from enclip_qdrant.catalog.rows import folder_rows, row_has_id, table_rows
from enclip_qdrant.catalog.tables import TABLE_EXTENSIONS, find_table, read_table, type_csv_columns
from enclip_qdrant.errors import CatalogError


def load_catalog(
    path: str | Path,
    *,
    image_col: str | None = None,
    text_col: str | None = None,
    id_col: str | None = None,
    require_text: bool = False,
    progress: Progress | None = None,
) -> Catalog:
    """Load a catalog folder or table file; bad rows become `Catalog.skipped`, never exceptions.

    Raises CatalogError only when the catalog cannot be read at all (missing path, ambiguous or
    unreadable table, unknown column flag) or when no usable product remains.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CatalogError(f"catalog not found: {path}")
    if path.is_file():
        if path.suffix.lower() not in TABLE_EXTENSIONS:
            raise CatalogError(
                f"{path.name} is not a catalog table (expected {', '.join(TABLE_EXTENSIONS)}) or a folder of images"
            )
        table: Path | None = path.resolve()
        root = table.parent
        given_root = os.path.abspath(path.parent)
    else:
        root = path.resolve()
        table = find_table(root)
        given_root = os.path.abspath(path)
    # Absolute paths in a table may spell the root as the user did (through a symlink) or resolved.
    bases = tuple(dict.fromkeys((str(root), given_root)))

    if table is None:
        given = [f for f, v in (("image_col", image_col), ("text_col", text_col), ("id_col", id_col)) if v]
        if given:
            raise CatalogError(
                f"{root} has no table (csv/jsonl/parquet), so {', '.join(given)} cannot apply; "
                "pass the table file instead"
            )
        if require_text:
            raise CatalogError(f"{root} is a bare folder of images with no captions, but text is required")
        columns = Columns(image=None, text=None, id=None)
        candidates, skipped = folder_rows(root)
    else:
        header, rows = read_table(table)
        columns = detect_columns(header, table, image_col, text_col, id_col)
        if table.suffix.lower() == ".csv":
            # Typed after detection so ids and captions stay verbatim strings ("007" stays "007").
            used = (columns.image, columns.text, columns.id)
            type_csv_columns([h for h in header if h not in used], rows)
        if require_text and columns.text is None:
            raise CatalogError(
                f"{table.name} has no text column (looked for {', '.join(TEXT_COLUMNS)}): pass --text-col; "
                f"available columns: {', '.join(header)}{delimiter_hint(header)}"
            )
        candidates, skipped = table_rows(bases, table, header, rows, columns, require_text)

    row_ids = frozenset(c.id if c.id is not None else c.image_rel for c in candidates)
    row_ids |= {s.ref for s in skipped if s.row is not None and row_has_id(s, columns)}
    unreadable = sum(1 for s in skipped if s.reason in UNREADABLE_ROW)
    checked, bad = check_images(candidates, progress, str(root))
    skipped.extend(bad)
    products = dedupe(checked, candidates, skipped)
    skipped.sort(key=lambda s: (s.row is None, s.row or 0, s.ref))

    catalog = Catalog(root=root, table=table, columns=columns, products=products, skipped=skipped,
                      row_ids=row_ids, unreadable_rows=unreadable)
    if not products:
        where = table.name if table else str(root)
        if not skipped:
            raise CatalogError(f"no usable products in {where}: the table has no rows")
        raise CatalogError(f"no usable products in {where}: {catalog.summary()}")
    return catalog
