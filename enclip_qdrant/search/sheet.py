"""Pictures of a collection: a PNG contact sheet of search results (thumbnails with rank, id and title),
and a clusters sheet (a row of sample products per cluster, titled with the cluster's label)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageOps

if TYPE_CHECKING:
    from enclip_qdrant.search.query import SearchResponse


def _resolve(rel: Any, root: str | Path | None) -> Path:
    image = Path(str(rel or ""))
    return Path(root) / image if root is not None and not image.is_absolute() else image


def _paste_thumb(sheet: Image.Image, draw: ImageDraw.ImageDraw, image: Path, xy: tuple[int, int],
                 thumb: tuple[int, int]) -> None:
    """The image padded into a `thumb` box at `xy`, or a grey "image missing" box when it does not read."""
    x, y = xy
    try:
        with Image.open(image) as im:
            sheet.paste(ImageOps.pad(im.convert("RGB"), thumb, color="white"), (x, y))
    except (OSError, ValueError):  # missing, unreadable, or not an image (ValueError: e.g. a folder path)
        draw.rectangle([x, y, x + thumb[0], y + thumb[1]], outline="grey")
        draw.text((x + 4, y + thumb[1] // 2), "image missing", fill="grey")


def _save(sheet: Image.Image, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def contact_sheet(response: SearchResponse, path: str | Path, *, catalog_root: str | Path | None = None,
                  thumb: tuple[int, int] = (120, 160), columns: int = 5) -> Path:
    """Write the results of `response` to `path` as a grid; relative image paths resolve against
    `catalog_root` (default: the response's own, which `Searcher.search` fills from the collection)."""
    root = catalog_root if catalog_root is not None else response.catalog_root
    n = max(1, len(response.results))
    cols, rows = min(columns, n), (n + columns - 1) // columns
    cell_w, cell_h = thumb[0] + 10, thumb[1] + 40
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), f"query: {response.query.get('text') or response.query.get('image')}", fill="black")
    for i, r in enumerate(response.results):
        x, y = (i % cols) * cell_w + 5, (i // cols) * cell_h + 28
        _paste_thumb(sheet, draw, _resolve(r.payload.get("image"), root), (x, y), thumb)
        draw.text((x, y + thumb[1] + 2), f"{r.rank}. {r.payload.get('product_id', '')}", fill="black")
        draw.text((x, y + thumb[1] + 16), str(r.payload.get("text", ""))[:22], fill="dimgray")
    return _save(sheet, path)


CLUSTER_SAMPLES = 8


def cluster_samples(points: Iterable[tuple[str, Mapping[str, Any]]], clusters: Iterable[int],
                    per_cluster: int = CLUSTER_SAMPLES) -> dict[int, list[Mapping[str, Any]]]:
    """The first `per_cluster` payloads of each cluster from (id, payload) pairs (a store's scroll, which
    is in a stable order); stops reading as soon as every cluster has its samples."""
    wanted: dict[int, list[Mapping[str, Any]]] = {int(c): [] for c in clusters}
    short = len(wanted)
    for _, payload in points:
        c = payload.get("cluster")
        if isinstance(c, int) and c in wanted and len(wanted[c]) < per_cluster:
            wanted[c].append(payload)
            if len(wanted[c]) == per_cluster:
                short -= 1
                if short == 0:
                    break
    return wanted


def cluster_sheet(samples: Mapping[int, list[Mapping[str, Any]]], path: str | Path, *,
                  labels: Mapping[int, str] | None = None, sizes: Mapping[int, int] | None = None,
                  catalog_root: str | Path | None = None, title: str = "",
                  thumb: tuple[int, int] = (90, 120), per_cluster: int = CLUSTER_SAMPLES) -> Path:
    """One row per cluster (in id order): a title line "3: Dress · Women · Red   (412 products)", then up
    to `per_cluster` sample thumbnails; relative image paths resolve against `catalog_root`."""
    labels, sizes = labels or {}, sizes or {}
    ids = sorted(samples)
    cell_w, row_h = thumb[0] + 6, thumb[1] + 24
    width = max(per_cluster * cell_w + 10, 320)
    sheet = Image.new("RGB", (width, max(1, len(ids)) * row_h + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title or f"{len(ids)} clusters", fill="black")
    for row, c in enumerate(ids):
        y = 24 + row * row_h
        head = f"{c}: {labels[c]}" if labels.get(c) else f"cluster {c}"
        draw.text((6, y + 4), head + (f"   ({sizes[c]:,} products)" if c in sizes else ""), fill="black")
        for i, payload in enumerate(samples[c][:per_cluster]):
            _paste_thumb(sheet, draw, _resolve(payload.get("image"), catalog_root), (6 + i * cell_w, y + 20), thumb)
    return _save(sheet, path)
