"""Which column is the image, the text and the id, detected from the header when not given."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from enclip_qdrant.catalog.model import Columns
from enclip_qdrant.errors import CatalogError

_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}

# Candidate column names, lower case, in priority order.
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "img")
TEXT_COLUMNS = ("text", "caption", "title", "productdisplayname", "description", "name")
ID_COLUMNS = ("id", "product_id", "sku", "item_id", "uid")


# --------------------------------------------------------------------------- columns


def detect_columns(
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
                f"{delimiter_hint(header)}"
            )
        return next((by_lower[c] for c in candidates if c in by_lower), None)

    return Columns(
        image=pick("--image-col", image_col, IMAGE_COLUMNS),
        text=pick("--text-col", text_col, TEXT_COLUMNS),
        id=pick("--id-col", id_col, ID_COLUMNS),
    )


def delimiter_hint(header: list[str]) -> str:
    """A header read as one or two columns holding `;`, tab or `|` is a CSV with another delimiter."""
    if len(header) > 2:
        return ""
    for sep, name in _DELIMITERS.items():
        if any(h.count(sep) >= 1 for h in header):
            return f" (the header looks {name}-separated ({sep!r}): save the table comma-separated)"
    return ""
