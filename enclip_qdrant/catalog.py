"""Load a product catalog: a folder of images plus an optional CSV / JSONL / Parquet table.

Real catalogs are messy (missing files, truncated JPEGs, duplicate ids, stray paths), and one bad
row must not cost an hour of indexing, so bad rows are skipped and *recorded* instead of raising.
Only a catalog with no usable product at all is an error. The library never prints: callers show
`Catalog.summary()` and drive a progress bar through the `progress` callback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from enclip_qdrant.errors import CatalogError
from enclip_qdrant.images import MAX_IMAGE_BYTES, ImageRejected, bombs_as_errors, check_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
TABLE_EXTENSIONS = (".csv", ".jsonl", ".parquet")
# Stems that name "the" table when a folder holds several; earlier wins.
PREFERRED_TABLE_STEMS = ("captions", "catalog", "products", "metadata", "data", "styles")
# Candidate column names, lower case, in priority order.
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "img")
TEXT_COLUMNS = ("text", "caption", "title", "productdisplayname", "description", "name")
ID_COLUMNS = ("id", "product_id", "sku", "item_id", "uid")

Progress = Callable[[int, int], None]

_INT_RE = re.compile(r"[+-]?(0|[1-9]\d*)")
# Leading zeros ("01234") mean a code, not a number: such columns stay strings.
_FLOAT_RE = re.compile(r"[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_MISSING_TOKENS = frozenset({"", "nan"})
# Decoding at reduced scale still parses every entropy-coded block, so truncation is caught,
# while large photos check in a fraction of the full-decode time.
_DRAFT_SIZE = (256, 256)


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
        table = _find_table(root)
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
        candidates, skipped = _folder_rows(root)
    else:
        header, rows = _read_table(table)
        columns = _detect_columns(header, table, image_col, text_col, id_col)
        if table.suffix.lower() == ".csv":
            # Typed after detection so ids and captions stay verbatim strings ("007" stays "007").
            used = (columns.image, columns.text, columns.id)
            _type_csv_columns([h for h in header if h not in used], rows)
        if require_text and columns.text is None:
            raise CatalogError(
                f"{table.name} has no text column (looked for {', '.join(TEXT_COLUMNS)}): pass --text-col; "
                f"available columns: {', '.join(header)}{_delimiter_hint(header)}"
            )
        candidates, skipped = _table_rows(bases, table, header, rows, columns, require_text)

    row_ids = frozenset(c.id if c.id is not None else c.image_rel for c in candidates)
    row_ids |= {s.ref for s in skipped if s.row is not None and _row_has_id(s, columns)}
    unreadable = sum(1 for s in skipped if s.reason in _UNREADABLE_ROW)
    checked, bad = _check_images(candidates, progress, str(root))
    skipped.extend(bad)
    products = _dedupe(checked, candidates, skipped)
    skipped.sort(key=lambda s: (s.row is None, s.row or 0, s.ref))

    catalog = Catalog(root=root, table=table, columns=columns, products=products, skipped=skipped,
                      row_ids=row_ids, unreadable_rows=unreadable)
    if not products:
        where = table.name if table else str(root)
        if not skipped:
            raise CatalogError(f"no usable products in {where}: the table has no rows")
        raise CatalogError(f"no usable products in {where}: {catalog.summary()}")
    return catalog


# --------------------------------------------------------------------------- table discovery


def _find_table(root: Path) -> Path | None:
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
class _Row:
    number: int  # 1-based data row
    ref: str  # where to look when the row is broken ("line 7")
    values: dict[str, Any] | None  # None when the row itself is unreadable
    error: str | None = None


def _read_table(table: Path) -> tuple[list[str], list[_Row]]:
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


def _read_csv(table: Path) -> tuple[list[str], list[_Row]]:
    with table.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        rows: list[_Row] = []
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
                rows.append(_Row(number, f"line {reader.line_num}", None, "malformed row"))
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
                rows.append(_Row(number, ref, None, "not UTF-8"))
            elif len(record) != len(header):
                rows.append(_Row(number, ref, None, "malformed row"))
            else:
                rows.append(_Row(number, ref, dict(zip(header, record, strict=True))))
    if header is None:
        raise CatalogError(f"{table.name} is empty")
    return header, rows


def _check_header(header: list[str], table: Path) -> None:
    seen: set[str] = set()
    for h in header:
        if h.lower() in seen and h:
            raise CatalogError(f"{table.name} has the column {h!r} twice (case-insensitively)")
        seen.add(h.lower())


def _type_csv_columns(header: list[str], rows: list[_Row]) -> None:
    """CSV has no types: make a column int/float/bool only when every value agrees (year -> int)."""
    good = [r.values for r in rows if r.values is not None]
    for col in header:
        vals = [v.strip() for v in (row[col] for row in good) if v.strip().lower() not in _MISSING_TOKENS]
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
            row[col] = None if v.lower() in _MISSING_TOKENS else conv(v)


def _parse_bool(v: str) -> bool:
    return v.lower() == "true"


def _read_jsonl(table: Path) -> tuple[list[str], list[_Row]]:
    header: dict[str, None] = {}  # insertion-ordered set of keys
    rows: list[_Row] = []
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
                rows.append(_Row(number, ref, None, "not UTF-8"))
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                rows.append(_Row(number, ref, None, "malformed JSON"))
                continue
            if not isinstance(obj, dict):
                rows.append(_Row(number, ref, None, "malformed row"))
                continue
            obj = {str(k).strip(): v for k, v in obj.items()}
            header.update(dict.fromkeys(obj))
            rows.append(_Row(number, ref, obj))
    if not header and not rows:
        raise CatalogError(f"{table.name} is empty")
    keys = list(header)
    _check_header(keys, table)
    return keys, rows


def _read_parquet(table: Path) -> tuple[list[str], list[_Row]]:
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
    rows = [_Row(i, f"row {i}", dict(rec)) for i, rec in enumerate(data.to_pylist(), start=1)]
    return header, rows


# --------------------------------------------------------------------------- columns


def _detect_columns(
    header: list[str], table: Path, image_col: str | None, text_col: str | None, id_col: str | None
) -> Columns:
    by_lower = {h.lower(): h for h in header}

    def pick(flag: str, given: str | None, candidates: Sequence[str]) -> str | None:
        if given is not None:
            if given in header:
                return given
            if given.lower() in by_lower:
                return by_lower[given.lower()]
            raise CatalogError(
                f"{flag} {given!r} is not a column of {table.name}; available columns: {', '.join(header)}"
                f"{_delimiter_hint(header)}"
            )
        return next((by_lower[c] for c in candidates if c in by_lower), None)

    return Columns(
        image=pick("--image-col", image_col, IMAGE_COLUMNS),
        text=pick("--text-col", text_col, TEXT_COLUMNS),
        id=pick("--id-col", id_col, ID_COLUMNS),
    )


_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _delimiter_hint(header: list[str]) -> str:
    """A header read as one or two columns holding `;`, tab or `|` is a CSV with another delimiter."""
    if len(header) > 2:
        return ""
    for sep, name in _DELIMITERS.items():
        if any(h.count(sep) >= 1 for h in header):
            return f" (the header looks {name}-separated ({sep!r}): save the table comma-separated)"
    return ""


# --------------------------------------------------------------------------- rows -> candidates


@dataclass(frozen=True)
class _Candidate:
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
        return None if v.lower() in _MISSING_TOKENS else v
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


def _table_rows(
    bases: tuple[str, ...], table: Path, header: list[str], rows: list[_Row], columns: Columns, require_text: bool
) -> tuple[list[_Candidate], list[Skipped]]:
    skipped: list[Skipped] = []
    candidates: list[_Candidate] = []
    used = {c for c in (columns.image, columns.text, columns.id) if c is not None}
    layout = [(folder, ext) for folder in ("images/", "") for ext in IMAGE_EXTENSIONS]
    layout += [(folder, ext.upper()) for folder, ext in list(layout)]

    if columns.image is None:
        if columns.id is None:
            raise CatalogError(
                f"{table.name} has no image column (looked for {', '.join(IMAGE_COLUMNS)}) and no id "
                f"column to find images by: pass --image-col (or --id-col); available columns: "
                f"{', '.join(header)}{_delimiter_hint(header)}"
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
        candidates.append(_Candidate(r.number, ref, ident, placed[0], placed[1], text, fields))
    return candidates, skipped


def _folder_rows(root: Path) -> tuple[list[_Candidate], list[Skipped]]:
    candidates: list[_Candidate] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(dirpath, name)
            rel = Path(full).relative_to(root).as_posix()
            ident = rel.rsplit(".", 1)[0]
            candidates.append(_Candidate(None, rel, ident, full, rel, None, {}))
    candidates.sort(key=lambda c: c.image_rel)
    if not candidates:
        raise CatalogError(f"{root} has neither a table (csv/jsonl/parquet) nor images ({', '.join(IMAGE_EXTENSIONS)})")
    return candidates, []


_UNREADABLE_ROW = frozenset({"malformed row", "malformed JSON", "not UTF-8"})


def _row_has_id(s: Skipped, columns: Columns) -> bool:
    """A skipped row's ref is its product id when the table has an id column and the row had one."""
    return columns.id is not None and s.reason not in _UNREADABLE_ROW and s.reason != "missing id"


# --------------------------------------------------------------------------- images


_REAL_DIRS: dict[str, str] = {}


def _realpath(path: str) -> str:
    """realpath with the directory part cached: one lstat per file instead of one per component."""
    if os.path.islink(path):
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    return os.path.join(_real_dir(folder), name)


def _real_dir(folder: str) -> str:
    real = _REAL_DIRS.get(folder)
    if real is None:
        real = _REAL_DIRS[folder] = os.path.realpath(folder)
    return real


def _within(path: str, base: str) -> bool:
    return path.startswith(base.rstrip(os.sep) + os.sep)


def _check_image(path: str, root: str) -> tuple[str | None, str]:
    """Return (sha256, real path) for a decodable image, or (None, reason). Runs in worker threads.

    A symlinked *file* must point inside the catalog (or beside itself): a link to /etc/passwd or
    /dev/zero is an escaping path like `../x`. A symlinked *folder* (images/ on another disk) is fine.
    """
    if os.path.islink(path):
        real = os.path.realpath(path)
        if not (_within(real, root) or _within(real, _real_dir(os.path.dirname(path)))):
            return None, "path escapes catalog"
    else:
        real = _realpath(path)
    try:
        check_file(real, MAX_IMAGE_BYTES)  # before open(): a FIFO would block, /dev/zero never end
        with open(real, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except ImageRejected as e:
        return None, e.reason
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None, "missing image"
    except OSError:
        return None, "unreadable image"
    if not data:
        return None, "corrupt image"
    if len(data) > MAX_IMAGE_BYTES:  # grew since the stat
        return None, "image too large"
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", _DRAFT_SIZE)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "image too large"
    except Exception:  # any decoder failure (OSError, SyntaxError, struct.error...) = unusable file
        return None, "corrupt image"
    return digest, real


_CHUNK = 64


def _check_images(
    candidates: list[_Candidate], progress: Progress | None, root: str
) -> tuple[list[tuple[int, Product]], list[Skipped]]:
    total = len(candidates)
    products: list[tuple[int, Product]] = []
    skipped: list[Skipped] = []
    step = max(1, total // 200)
    if progress:
        progress(0, total)
    _REAL_DIRS.clear()  # a folder may have been re-linked since the last load
    # Threads overlap file I/O and the GIL-free part of decoding (cold disks, large photos). For tiny
    # images Python overhead dominates, so: few workers, and chunks to keep task overhead small.
    workers = max(1, min(4, os.cpu_count() or 1))
    chunks = [candidates[i : i + _CHUNK] for i in range(0, total, _CHUNK)]

    def check_chunk(chunk: list[_Candidate]) -> list[tuple[str | None, str]]:
        return [_check_image(c.image, root) for c in chunk]

    # The warnings filter is process-wide: set once here, the workers see it too.
    with bombs_as_errors(), ThreadPoolExecutor(max_workers=workers) as pool:
        results = (r for chunk in pool.map(check_chunk, chunks) for r in chunk)
        for i, (c, (digest, info)) in enumerate(zip(candidates, results, strict=True), start=1):
            if digest is None:
                skipped.append(Skipped(c.row, c.ref, info))
            else:
                product = Product(
                    id=c.id if c.id is not None else c.image_rel,
                    image=Path(info),
                    image_rel=c.image_rel,
                    text=c.text,
                    fields=c.fields,
                    content_hash=digest,
                )
                products.append((i - 1, product))
            if progress and (i % step == 0 or i == total):
                progress(i, total)
    return products, skipped


def _dedupe(products: list[tuple[int, Product]], candidates: list[_Candidate], skipped: list[Skipped]) -> list[Product]:
    """Keep the first *usable* row per id: a broken first copy should not hide a good second one."""
    seen: set[str] = set()
    kept: list[Product] = []
    dups: list[Skipped] = []
    for idx, p in products:
        if p.id in seen:
            c = candidates[idx]
            dups.append(Skipped(c.row, c.ref, "duplicate id"))
            continue
        seen.add(p.id)
        kept.append(p)
    skipped.extend(dups)
    return kept


# --------------------------------------------------------------------------- summary


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
