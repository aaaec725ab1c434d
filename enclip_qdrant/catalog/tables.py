"""Finding and reading a catalog's table (CSV, JSONL, Parquet) into typed rows."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclip_qdrant.errors import CatalogError

TABLE_EXTENSIONS = (".csv", ".jsonl", ".parquet")
# Stems that name "the" table when a folder holds several; earlier wins.
PREFERRED_TABLE_STEMS = ("captions", "catalog", "products", "metadata", "data", "styles")

_INT_RE = re.compile(r"[+-]?(0|[1-9]\d*)")
# Leading zeros ("01234") mean a code, not a number: such columns stay strings.
_FLOAT_RE = re.compile(r"[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
MISSING_TOKENS = frozenset({"", "nan"})


# --------------------------------------------------------------------------- table discovery


def find_table(root: Path) -> Path | None:
    found = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TABLE_EXTENSIONS
    )
    if len(found) <= 1:
        return found[0] if found else None
    for stem in PREFERRED_TABLE_STEMS:
        named = [p for p in found if p.stem.lower() == stem]
        if len(named) == 1:
            return named[0]
        if named:
            found = named
            break
    raise CatalogError(
        f"{root} holds several tables ({', '.join(p.name for p in found)}); pass the one to use as the path"
    )


# --------------------------------------------------------------------------- table reading


@dataclass(frozen=True)
class TableRow:
    number: int  # 1-based data row
    ref: str  # where to look when the row is broken ("line 7")
    values: dict[str, Any] | None  # None when the row itself is unreadable
    error: str | None = None


def read_table(table: Path) -> tuple[list[str], list[TableRow]]:
    suffix = table.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(table)
        if suffix == ".jsonl":
            return _read_jsonl(table)
        return _read_parquet(table)
    except OSError as e:
        raise CatalogError(f"cannot read {table}: {e}") from e


def _is_utf8(values: Iterable[str]) -> bool:
    # The file is decoded with surrogateescape, so undecodable bytes show up as lone surrogates.
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_csv(table: Path) -> tuple[list[str], list[TableRow]]:
    with table.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        rows: list[TableRow] = []
        number = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error:
                # The reader resets its state on the next call, so one broken record costs one row.
                if header is None:
                    raise CatalogError(f"{table.name}: cannot parse the CSV header") from None
                number += 1
                rows.append(TableRow(number, f"line {reader.line_num}", None, "malformed row"))
                continue
            if not record or all(not v.strip() for v in record):
                continue
            if header is None:
                if not _is_utf8(record) or any("\x00" in v for v in record):
                    raise CatalogError(f"{table.name} is not UTF-8 text (its header does not decode)")
                header = [h.strip() for h in record]
                _check_header(header, table)
                continue
            number += 1
            ref = f"line {reader.line_num}"
            if not _is_utf8(record):
                rows.append(TableRow(number, ref, None, "not UTF-8"))
            elif len(record) != len(header):
                rows.append(TableRow(number, ref, None, "malformed row"))
            else:
                rows.append(TableRow(number, ref, dict(zip(header, record, strict=True))))
    if header is None:
        raise CatalogError(f"{table.name} is empty")
    return header, rows


def _check_header(header: list[str], table: Path) -> None:
    seen: set[str] = set()
    for h in header:
        if h.lower() in seen and h:
            raise CatalogError(f"{table.name} has the column {h!r} twice (case-insensitively)")
        seen.add(h.lower())


def type_csv_columns(header: list[str], rows: list[TableRow]) -> None:
    """CSV has no types: make a column int/float/bool only when every value agrees (year -> int)."""
    good = [r.values for r in rows if r.values is not None]
    for col in header:
        vals = [v.strip() for v in (row[col] for row in good) if v.strip().lower() not in MISSING_TOKENS]
        if not vals:
            continue
        conv: Callable[[str], Any] | None = None
        if all(_INT_RE.fullmatch(v) for v in vals):
            conv = int
        elif all(_FLOAT_RE.fullmatch(v) for v in vals):
            conv = float
        elif all(v.lower() in ("true", "false") for v in vals):
            conv = _parse_bool
        if conv is None:
            continue
        for row in good:
            v = row[col].strip()
            row[col] = None if v.lower() in MISSING_TOKENS else conv(v)


def _parse_bool(v: str) -> bool:
    return v.lower() == "true"


def _read_jsonl(table: Path) -> tuple[list[str], list[TableRow]]:
    header: dict[str, None] = {}  # insertion-ordered set of keys
    rows: list[TableRow] = []
    number = 0
    with table.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            number += 1
            ref = f"line {lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                rows.append(TableRow(number, ref, None, "not UTF-8"))
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                rows.append(TableRow(number, ref, None, "malformed JSON"))
                continue
            if not isinstance(obj, dict):
                rows.append(TableRow(number, ref, None, "malformed row"))
                continue
            obj = {str(k).strip(): v for k, v in obj.items()}
            header.update(dict.fromkeys(obj))
            rows.append(TableRow(number, ref, obj))
    if not header and not rows:
        raise CatalogError(f"{table.name} is empty")
    keys = list(header)
    _check_header(keys, table)
    return keys, rows


def _read_parquet(table: Path) -> tuple[list[str], list[TableRow]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CatalogError(f"reading {table.name} needs pyarrow: pip install enclip-qdrant[parquet]") from None
    try:
        data = pq.read_table(table)
    except Exception as e:  # pyarrow raises its own hierarchy; any failure means "unreadable file"
        raise CatalogError(f"cannot read {table.name}: {e}") from e
    header = [str(c) for c in data.column_names]
    _check_header(header, table)
    rows = [TableRow(i, f"row {i}", dict(rec)) for i, rec in enumerate(data.to_pylist(), start=1)]
    return header, rows
