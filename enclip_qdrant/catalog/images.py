"""Bounded image decoding: memory depends on the batch, never on how big the photos are.

A catalog is untrusted input. A 12-megapixel photo decodes to 36 MB, a FIFO named `.jpg` blocks `open()`
forever, a symlink to /dev/zero reads until memory runs out, and a decompression bomb asks for gigabytes.
So a file is opened only when it is a regular file of bounded size, JPEGs are decoded at reduced scale
(Pillow's draft mode, free: the DCT is simply not run at full size) and everything is shrunk with
`thumbnail` to a bound a few times the models' input size. Images smaller than the bound are untouched,
so their embeddings are exactly what a full decode gives.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from enclip_qdrant.errors import EnclipError

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # larger than any product photo; a bigger "image" is not one
# Never shrink below this: catalog images of a few hundred pixels (60x80 thumbnails...) stay bit-identical.
MIN_BOUND = 256
DEFAULT_BOUND = 512


class ImageRejected(EnclipError):
    """An image file cannot be used; `reason` is the short category a skipped row reports."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def bound_for(input_sizes: Sequence[Any]) -> int:
    """Longest side to decode to: 2x the largest model input (room for crops), at least MIN_BOUND."""
    sizes: list[int] = []
    for s in input_sizes:
        sizes.extend(int(v) for v in (s if isinstance(s, (list, tuple)) else (s,)))
    return max(MIN_BOUND, 2 * max(sizes, default=DEFAULT_BOUND // 2))


def image_bound(bundle: Any) -> int:
    """The decode bound for a bundle's members: memory follows the batch, not the photos."""
    members = getattr(getattr(bundle, "ensemble", None), "members", [])
    return bound_for([m.preprocess_cfg.get("size", 0) for m in members])


def check_file(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> os.stat_result:
    """stat (following symlinks) before opening: only a regular file of at most `max_bytes` is read."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageRejected("missing image") from None
    except OSError as e:
        raise ImageRejected("unreadable image", e.strerror or "") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageRejected("missing image")
    if not stat.S_ISREG(st.st_mode):
        raise ImageRejected("not a regular file")
    if st.st_size > max_bytes:
        raise ImageRejected("image too large", f"{st.st_size:,} bytes (limit {max_bytes:,})")
    return st


@contextmanager
def bombs_as_errors() -> Iterator[None]:
    """Pillow only *warns* between 1x and 2x MAX_IMAGE_PIXELS; make that an error too.

    The warnings filter is process-wide: enter this once around a thread pool, not in each worker.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def decode_bounded(im: Image.Image, bound: int | None) -> Image.Image:
    """An opened image decoded to RGB with its longest side at most `bound` (JPEGs at reduced scale)."""
    if bound is not None:
        if im.format == "JPEG":
            im.draft("RGB", (bound, bound))  # only ever scales by 1/2, 1/4, 1/8 while staying >= bound
        im.load()
        if max(im.size) > bound:
            im.thumbnail((bound, bound), Image.Resampling.BICUBIC)
    return im.convert("RGB")


def load_image(path: str | Path, bound: int | None = DEFAULT_BOUND, *, max_bytes: int = MAX_IMAGE_BYTES,
               ) -> Image.Image:
    """An RGB image whose longest side is at most `bound` (None: full size); ImageRejected otherwise."""
    check_file(path, max_bytes)
    try:
        with bombs_as_errors(), Image.open(path) as im:
            return decode_bounded(im, bound)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("image too large", str(e).splitlines()[0]) from None
    except FileNotFoundError:
        raise ImageRejected("missing image") from None
    except Exception as e:  # any decoder failure (OSError, SyntaxError, struct.error...) = unusable file
        raise ImageRejected("corrupt image", str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def read_image(path: str | Path, bound: int | None, *, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[Image.Image, str]:
    """`load_image` that also returns the sha256 of the bytes it decoded, so a cache keyed by the catalog's content
    hash can tell a file that changed since the catalog was read. Callers wrap their pool in `bombs_as_errors`."""
    check_file(path, max_bytes)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageRejected("missing image") from None
    except OSError as e:
        raise ImageRejected("unreadable image", e.strerror or "") from None
    if len(data) > max_bytes:
        raise ImageRejected("image too large", f"over {max_bytes:,} bytes")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            return decode_bounded(im, bound), digest
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("image too large", str(e).splitlines()[0]) from None
    except Exception as e:  # any decoder failure = unusable file
        raise ImageRejected("corrupt image", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
