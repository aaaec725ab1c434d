"""Search results as a picture: a PNG contact sheet of thumbnails with rank, id and title."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageOps

if TYPE_CHECKING:
    from .search import SearchResponse


def contact_sheet(response: SearchResponse, path: str | Path, *, catalog_root: str | Path | None = None,
                  thumb: tuple[int, int] = (120, 160), columns: int = 5) -> Path:
    """Write the results of `response` to `path` as a grid; relative image paths resolve against
    `catalog_root` (default: the response's own, which `Searcher.search` fills from the collection)."""
    out = Path(path)
    root = catalog_root if catalog_root is not None else response.catalog_root
    n = max(1, len(response.results))
    cols, rows = min(columns, n), (n + columns - 1) // columns
    cell_w, cell_h = thumb[0] + 10, thumb[1] + 40
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), f"query: {response.query.get('text') or response.query.get('image')}", fill="black")
    for i, r in enumerate(response.results):
        x, y = (i % cols) * cell_w + 5, (i // cols) * cell_h + 28
        image = Path(r.payload.get("image", ""))
        if root is not None and not image.is_absolute():
            image = Path(root) / image
        try:
            with Image.open(image) as im:
                sheet.paste(ImageOps.pad(im.convert("RGB"), thumb, color="white"), (x, y))
        except OSError:
            draw.rectangle([x, y, x + thumb[0], y + thumb[1]], outline="grey")
            draw.text((x + 4, y + thumb[1] // 2), "image missing", fill="grey")
        draw.text((x, y + thumb[1] + 2), f"{r.rank}. {r.payload.get('product_id', '')}", fill="black")
        draw.text((x, y + thumb[1] + 16), str(r.payload.get("text", ""))[:22], fill="dimgray")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
