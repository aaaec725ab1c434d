"""Decoded training images in a uint8 cache on disk, inside the run folder, memory-mapped by every reader.

Why: holding every product's decoded photo in memory for the whole run made training memory grow with the
catalog (and with the photos' size). Each distinct image (by the sha256 of its file) is decoded once, at the
bound the augmentation needs (`bound_for` the members' input sizes), and appended to `image_cache.u8`;
`image_cache.safetensors` indexes it (sha256, offset, height, width, and the committed length of the data).
Every member, every worker process and every resumed run reads the same file through `numpy.memmap`.

Crash safety: pixels are appended and fsynced before the index that names them is replaced (atomically,
files.py), so after a kill at any moment the index names only durable pixels; a rerun cuts whatever was
appended after the last commit and goes on from there. An index entry is only used for a product whose
catalog content hash it carries, and the bytes decoded are hashed again: a file that changed since the
catalog was read is one clear error, never a silently wrong image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy

from enclip_qdrant.catalog.images import bombs_as_errors, read_image
from enclip_qdrant.errors import CatalogError
from enclip_qdrant.files import atomic_write_bytes
from enclip_qdrant.progress import Progress
from enclip_qdrant.system import available_cores

CACHE_DATA = "image_cache.u8"
CACHE_INDEX = "image_cache.safetensors"
FORMAT = "1"
COMMIT_EVERY = 2048  # images decoded between index commits: a kill loses at most this much decoding
_WINDOW = 64  # images decoded at once: bounds the pixels in flight, not the catalog
# A reader maps the file afresh after this many bytes: the pages it touched leave its resident set, so reading
# a whole epoch through one mapping does not make a process look as big as the cache.
REMAP_BYTES = 64 << 20


class ImageCache(Sequence[Image.Image]):
    """The cached images of a run's products, in product order: `array(i)` (uint8 HxWx3) or `cache[i]` (PIL).

    Holds only per-product offsets and shapes; pickles without its mapping, so data-loader workers and
    member processes open their own."""

    def __init__(self, data: Path, offsets: np.ndarray, shapes: np.ndarray):
        self.data, self.offsets, self.shapes = Path(data), offsets, shapes
        self._map: np.memmap | None = None
        self._read = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "offsets": self.offsets, "shapes": self.shapes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["data"], state["offsets"], state["shapes"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.offsets)

    def array(self, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[i])
        start, n = int(self.offsets[i]), h * w * 3
        if self._map is None or self._read > REMAP_BYTES:
            self._map, self._read = np.memmap(self.data, dtype=np.uint8, mode="r"), 0
        self._read += n
        return np.array(self._map[start:start + n]).reshape(h, w, 3)

    @overload
    def __getitem__(self, i: int) -> Image.Image: ...
    @overload
    def __getitem__(self, i: slice) -> list[Image.Image]: ...

    def __getitem__(self, i: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Image.fromarray(self.array(int(i)), "RGB")

    def subset(self, idx: Sequence[int] | np.ndarray) -> ImageCache:
        """The images of these products only (a view: no pixels are read)."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageCache(self.data, self.offsets[idx], self.shapes[idx])


def _read_index(folder: Path, bound: int) -> tuple[dict[str, tuple[int, int, int]], int]:
    """The committed entries (sha256 hex -> offset, h, w) and data length; nothing when absent, unreadable,
    of another bound or format, or naming more data than the file holds (then the cache starts afresh)."""
    index, data = folder / CACHE_INDEX, folder / CACHE_DATA
    try:
        raw = index.read_bytes()
        from safetensors import safe_open  # metadata without a second parse of the tensors

        tensors = load_numpy(raw)
        with safe_open(str(index), framework="numpy") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("bound") != str(bound):
            return {}, 0
        end = int(meta["end"])
        if not data.is_file() or data.stat().st_size < end:
            return {}, 0
        shas, offsets, shapes = tensors["sha256"], tensors["offset"], tensors["shape"]
    except Exception:  # missing, torn or foreign: not our index
        return {}, 0
    return {bytes(s).hex(): (int(o), int(h), int(w)) for s, o, (h, w) in zip(shas, offsets, shapes, strict=True)}, end


def _write_index(folder: Path, entries: dict[str, tuple[int, int, int]], end: int, bound: int) -> None:
    shas = np.frombuffer(b"".join(bytes.fromhex(s) for s in entries), dtype=np.uint8).reshape(-1, 32)
    vals = np.array(list(entries.values()), dtype=np.int64).reshape(-1, 3)
    blob = save_numpy({"sha256": shas.copy(), "offset": vals[:, 0].copy(), "shape": vals[:, 1:].astype(np.int32)},
                      metadata={"format": FORMAT, "bound": str(bound), "end": str(end)})
    atomic_write_bytes(folder / CACHE_INDEX, blob)


def remove_cache(folder: Path) -> None:
    """Once the bundle is complete the cache has done its work: it is training data (gigabytes for a big
    catalog), not part of the model, so it leaves the bundle."""
    for name in (CACHE_INDEX, CACHE_DATA):
        (Path(folder) / name).unlink(missing_ok=True)


def _decode(product: Any, bound: int) -> np.ndarray:
    im, digest = read_image(product.image, bound)
    if digest != product.content_hash:
        raise CatalogError(f"the image of product {product.id} ({product.image}) changed since the catalog was "
                           "read; run the command again")
    return np.asarray(im, dtype=np.uint8)


def _windows(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), n):
        yield items[start:start + n]


def build_cache(folder: Path, products: Sequence[Any], bound: int, progress: Progress,
                workers: int | None = None) -> ImageCache:
    """Decode every product's image not yet in the run's cache (once per distinct content hash), then the view.

    Resumes what a killed run committed; decodes in threads (Pillow releases the GIL while decoding)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries, end = _read_index(folder, bound)
    todo: dict[str, Any] = {}
    for p in products:
        if p.content_hash not in entries:
            todo.setdefault(p.content_hash, p)
    if entries and todo:
        progress.log(f"image cache: {len(products) - sum(1 for p in products if p.content_hash in todo)} products "
                     f"already decoded, {len(todo)} to go")
    elif entries:
        progress.log(f"image cache: all {len(products)} products already decoded")
    if todo:
        _append(folder, list(todo.values()), entries, end, bound, progress, workers or available_cores())
    rows = [entries[p.content_hash] for p in products]
    offsets = np.array([r[0] for r in rows], dtype=np.int64)
    shapes = np.array([(r[1], r[2]) for r in rows], dtype=np.int32).reshape(-1, 2)
    return ImageCache(folder / CACHE_DATA, offsets, shapes)


def _append(folder: Path, todo: list[Any], entries: dict[str, tuple[int, int, int]], end: int, bound: int,
            progress: Progress, workers: int) -> None:
    task = progress.task("decoding images", total=len(todo))
    data = folder / CACHE_DATA
    pending = 0
    with open(data, "ab") as f, bombs_as_errors(), ThreadPoolExecutor(max_workers=workers) as pool:
        f.truncate(end)  # whatever was appended after the last commit is not named by the index: cut it
        f.seek(end)
        try:
            for window in _windows(todo, _WINDOW):
                for p, pixels in zip(window, pool.map(lambda p: _decode(p, bound), window), strict=True):
                    f.write(pixels.tobytes())
                    entries[p.content_hash] = (end, pixels.shape[0], pixels.shape[1])
                    end += pixels.size
                pending += len(window)
                task.advance(len(window))
                if pending >= COMMIT_EVERY:
                    _commit(f, folder, entries, end, bound)
                    pending = 0
        finally:
            if pending:  # what decoded before an error or an interrupt is kept for the rerun
                _commit(f, folder, entries, end, bound)
    task.close()


def _commit(f: Any, folder: Path, entries: dict[str, tuple[int, int, int]], end: int, bound: int) -> None:
    f.flush()
    os.fsync(f.fileno())  # the pixels are durable before an index names them
    _write_index(folder, entries, end, bound)
