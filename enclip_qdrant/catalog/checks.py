"""Image checks (inside the catalog, decodable, not a bomb) run in parallel, and duplicate ids resolved."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from enclip_qdrant.catalog.images import MAX_IMAGE_BYTES, ImageRejected, bombs_as_errors, check_file
from enclip_qdrant.catalog.model import Product, Progress, Skipped
from enclip_qdrant.catalog.rows import RowCandidate

_REAL_DIRS: dict[str, str] = {}

_CHUNK = 64

# Decoding at reduced scale still parses every entropy-coded block, so truncation is caught,
# while large photos check in a fraction of the full-decode time.
_DRAFT_SIZE = (256, 256)


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


def check_images(
    candidates: list[RowCandidate], progress: Progress | None, root: str
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

    def check_chunk(chunk: list[RowCandidate]) -> list[tuple[str | None, str]]:
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


def dedupe(
    products: list[tuple[int, Product]], candidates: list[RowCandidate], skipped: list[Skipped]
) -> list[Product]:
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
