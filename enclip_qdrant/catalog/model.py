"""Load a product catalog: a folder of images plus an optional CSV / JSONL / Parquet table.

Real catalogs are messy (missing files, truncated JPEGs, duplicate ids, stray paths), and one bad
row must not cost an hour of indexing, so bad rows are skipped and *recorded* instead of raising.
Only a catalog with no usable product at all is an error. The library never prints: callers show
`Catalog.summary()` and drive a progress bar through the `progress` callback.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Product:
    id: str  # catalog id (string form)
    image: Path  # absolute, resolved path
    image_rel: str  # path relative to the catalog root, posix
    text: str | None  # caption/title, stripped; None when the catalog has no text column
    fields: dict[str, Any]  # every other column (JSON-able scalars); NaN/empty dropped
    content_hash: str  # sha256 hex of the image file bytes


@dataclass(frozen=True)
class Skipped:
    row: int | None  # 1-based data row number in the table (None for bare folders)
    ref: str  # id or path, whatever identifies it
    reason: str  # short category, e.g. "missing image"; identical reasons are counted together


@dataclass(frozen=True)
class Columns:
    image: str | None
    text: str | None
    id: str | None


@dataclass
class Catalog:
    root: Path
    table: Path | None
    columns: Columns
    products: list[Product]
    skipped: list[Skipped]
    # Every product id the table names, usable or not: `--prune` deletes only ids gone from the table,
    # never a product whose row is still there but whose image failed to load right now.
    row_ids: frozenset[str] = frozenset()
    # Rows so broken their id is unknown (malformed CSV/JSON): pruning cannot tell what they hold.
    unreadable_rows: int = 0

    def __len__(self) -> int:
        return len(self.products)

    def fingerprint(self) -> str:
        """Identify the catalog's content, so an index built from it can tell when it is stale.

        Order-independent: reordering table rows or moving the folder keeps the fingerprint.
        """
        items = sorted((p.id, p.content_hash, p.text) for p in self.products)
        blob = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def with_text(self) -> list[Product]:
        return [p for p in self.products if p.text is not None]

    def skip_counts(self) -> Counter[str]:
        return Counter(s.reason for s in self.skipped)

    def summary(self, examples: int = 3) -> str:
        """One line a CLI can print: counts by reason plus the first few rows to go and look at."""
        return _summary(len(self.products), self.skipped, examples)


UNREADABLE_ROW = frozenset({"malformed row", "malformed JSON", "not UTF-8"})


def _summary(n_products: int, skipped: Sequence[Skipped], examples: int) -> str:
    head = f"{n_products:,} product{'s' if n_products != 1 else ''}"
    if not skipped:
        return f"{head}, 0 skipped"
    counts = Counter(s.reason for s in skipped)
    by_reason = ", ".join(f"{n:,} {reason}" for reason, n in counts.most_common())
    shown = "; ".join(_describe(s) for s in skipped[:examples])
    more = "; ..." if len(skipped) > examples else ""
    return f"{head}, {len(skipped):,} skipped ({by_reason}): first: {shown}{more}"


def _describe(s: Skipped) -> str:
    where = f"row {s.row} ({s.ref})" if s.row is not None else s.ref
    return f"{where}: {s.reason}"
