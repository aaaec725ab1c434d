"""Synthetic fashion catalogs: tests and demos need labelled product photos without downloading any.

Each product is a flat garment silhouette (article type) in a named colour with a pattern, drawn
with PIL, then degraded the way real catalog thumbnails are (small, blurred, re-compressed JPEG) so
the pipeline sees the same "low-quality image" regime as fashion-dev. Attributes are known exactly,
which makes relevance judgements in tests trivial: same articleType and baseColour = relevant.

    python -m enclip_qdrant.catalog.synthetic OUT --n 500
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import itertools
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in canvas pixels
Pt = tuple[float, float]


@dataclass(frozen=True)
class Article:
    name: str  # the articleType field value
    nouns: tuple[str, ...]  # caption words for it; the first is the canonical one
    genders: tuple[str, ...]


ARTICLES: dict[str, Article] = {
    "tshirt": Article("Tshirt", ("T-shirt", "Tshirt", "Tee"), ("Men", "Women", "Unisex")),
    "dress": Article("Dress", ("Dress",), ("Women",)),
    "trousers": Article("Trousers", ("Trousers", "Pants"), ("Men", "Women")),
    "handbag": Article("Handbag", ("Handbag", "Bag"), ("Women",)),
    "sneakers": Article("Sneakers", ("Sneakers", "Shoes"), ("Men", "Women", "Unisex")),
    "skirt": Article("Skirt", ("Skirt",), ("Women",)),
    "cap": Article("Cap", ("Cap",), ("Men", "Unisex")),
}

# Well separated in RGB so a colour label is never ambiguous after JPEG damage.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "blue": (35, 75, 200),
    "green": (35, 145, 60),
    "black": (22, 22, 24),
    "white": (246, 246, 244),
    "yellow": (238, 206, 30),
    "pink": (240, 130, 175),
    "grey": (128, 128, 130),
    "brown": (115, 72, 38),
    "orange": (240, 125, 25),
    "purple": (115, 45, 150),
}

# pattern -> caption words; "" means the pattern is left unsaid (plain items rarely say "plain").
PATTERNS: dict[str, tuple[str, ...]] = {
    "plain": ("", "Solid", "Plain"),
    "striped": ("Striped",),
    "dotted": ("Polka Dot", "Dotted"),
    "checked": ("Checked", "Check"),
}

BRANDS = ("Nova", "Urbane", "Kite", "Marlo", "Fable", "Orbit")

FIELDNAMES = ("id", "image", "title", "articleType", "baseColour", "pattern", "gender")


def _pick(name: str, options: Sequence[str] | None, known: dict[str, object]) -> list[str]:
    if options is None:
        return list(known)
    chosen = [o.lower() for o in options]
    bad = [o for o in chosen if o not in known]
    if bad or not chosen:
        raise ValueError(f"unknown {name}: {', '.join(bad) or '(none given)'}; known: {', '.join(known)}")
    return list(dict.fromkeys(chosen))


def make_catalog(
    root: str | Path,
    n: int = 200,
    *,
    seed: int = 0,
    articles: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    patterns: Sequence[str] | None = None,
    size: tuple[int, int] = (60, 80),
    fmt: str = "csv",
) -> Path:
    """Write `n` products to `root/images/<id>.jpg` plus `captions.csv` (or `catalog.jsonl`).

    Attribute combinations are dealt round-robin from one seeded shuffle, so every combination
    appears once before any repeats, and product i is the same whatever `n` is.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"fmt must be 'csv' or 'jsonl', not {fmt!r}")
    if n < 0:
        raise ValueError("n must be >= 0")
    arts = _pick("articles", articles, ARTICLES)  # type: ignore[arg-type]
    cols = _pick("colours", colours, COLOURS)  # type: ignore[arg-type]
    pats = _pick("patterns", patterns, PATTERNS)  # type: ignore[arg-type]
    combos = list(itertools.product(arts, cols, pats))
    random.Random(f"combos:{seed}").shuffle(combos)

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for i in range(n):
        article, colour, pattern = combos[i % len(combos)]
        rng = random.Random(f"product:{seed}:{i}")
        pid = str(10001 + i)
        rel = f"images/{pid}.jpg"
        (root / rel).write_bytes(render(article, colour, pattern, rng, size=size))
        gender = rng.choice(ARTICLES[article].genders)
        rows.append(
            {
                "id": pid,
                "image": rel,
                "title": caption(article, colour, pattern, gender, rng),
                "articleType": ARTICLES[article].name,
                "baseColour": colour.capitalize(),
                "pattern": pattern.capitalize(),
                "gender": gender,
            }
        )
    if fmt == "csv":
        with (root / "captions.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDNAMES)
            writer.writeheader()
            writer.writerows(rows)
    else:
        with (root / "catalog.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return root


def caption(article: str, colour: str, pattern: str, gender: str, rng: random.Random) -> str:
    """A title in one of the shapes real catalogs use ("Women Red Striped Dress", "Red striped dress")."""
    noun = rng.choice(ARTICLES[article].nouns)
    pat = rng.choice(PATTERNS[pattern])
    words = [colour.capitalize(), *([pat] if pat else []), noun]
    form = rng.random()
    if form < 0.35:
        return " ".join([gender, *words])
    if form < 0.65:
        return " ".join([rng.choice(BRANDS), gender, *words])
    return " ".join(words).capitalize()


# --------------------------------------------------------------------------- drawing


def _jitter_colour(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    f = rng.uniform(0.88, 1.08)
    return tuple(max(0, min(255, round(c * f + rng.uniform(-8, 8)))) for c in rgb)  # type: ignore[return-value]


def _contrast(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    """Second colour of a pattern: light on dark garments, dark on light ones, so it survives JPEG."""
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    if lum > 140:
        k = rng.uniform(0.35, 0.5)
        return tuple(round(c * k) for c in rgb)  # type: ignore[return-value]
    v = rng.randint(215, 240)
    return (v, v, v)


def _poly(box: Box, pts: Sequence[Pt]) -> list[Pt]:
    x0, y0, x1, y1 = box
    return [(x0 + x * (x1 - x0), y0 + y * (y1 - y0)) for x, y in pts]


def _sub(box: Box, a: Box) -> Box:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return (x0 + a[0] * w, y0 + a[1] * h, x0 + a[2] * w, y0 + a[3] * h)


def _tshirt(d: ImageDraw.ImageDraw, b: Box) -> None:
    pts = [(0.36, 0.12), (0.44, 0.12), (0.5, 0.18), (0.56, 0.12), (0.64, 0.12), (0.92, 0.3), (0.83, 0.46),
           (0.7, 0.38), (0.7, 0.9), (0.3, 0.9), (0.3, 0.38), (0.17, 0.46), (0.08, 0.3)]  # fmt: skip
    d.polygon(_poly(b, pts), fill=255)


def _dress(d: ImageDraw.ImageDraw, b: Box) -> None:
    pts = [(0.4, 0.06), (0.45, 0.06), (0.5, 0.12), (0.55, 0.06), (0.6, 0.06), (0.62, 0.34), (0.58, 0.44),
           (0.82, 0.94), (0.18, 0.94), (0.42, 0.44), (0.38, 0.34)]  # fmt: skip
    d.polygon(_poly(b, pts), fill=255)


def _trousers(d: ImageDraw.ImageDraw, b: Box) -> None:
    pts = [(0.3, 0.06), (0.7, 0.06), (0.76, 0.94), (0.56, 0.94), (0.5, 0.34), (0.44, 0.94), (0.24, 0.94)]
    d.polygon(_poly(b, pts), fill=255)


def _skirt(d: ImageDraw.ImageDraw, b: Box) -> None:
    d.polygon(_poly(b, [(0.34, 0.28), (0.66, 0.28), (0.84, 0.76), (0.16, 0.76)]), fill=255)


def _handbag(d: ImageDraw.ImageDraw, b: Box) -> None:
    w = max(3, round((b[2] - b[0]) * 0.06))
    d.arc(_sub(b, (0.3, 0.2, 0.7, 0.62)), 180, 360, fill=255, width=w)
    d.rounded_rectangle(_sub(b, (0.16, 0.4, 0.84, 0.84)), radius=max(2, w), fill=255)


def _sneakers(d: ImageDraw.ImageDraw, b: Box) -> None:
    pts = [(0.06, 0.56), (0.4, 0.52), (0.56, 0.38), (0.74, 0.36), (0.8, 0.54), (0.94, 0.6), (0.95, 0.7),
           (0.06, 0.7)]  # fmt: skip
    d.polygon(_poly(b, pts), fill=255)


def _cap(d: ImageDraw.ImageDraw, b: Box) -> None:
    d.pieslice(_sub(b, (0.2, 0.32, 0.74, 0.86)), 180, 360, fill=255)
    d.polygon(_poly(b, [(0.6, 0.56), (0.94, 0.6), (0.9, 0.64), (0.6, 0.6)]), fill=255)


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, Box], None]] = {
    "tshirt": _tshirt,
    "dress": _dress,
    "trousers": _trousers,
    "handbag": _handbag,
    "sneakers": _sneakers,
    "skirt": _skirt,
    "cap": _cap,
}


def _texture(size: tuple[int, int], pattern: str, base: tuple[int, int, int], rng: random.Random) -> Image.Image:
    img = Image.new("RGB", size, base)
    if pattern == "plain":
        return img
    d = ImageDraw.Draw(img)
    other = _contrast(base, rng)
    w, h = size
    step = rng.randint(11, 16)
    if pattern == "striped":
        band = max(3, step // 2)
        off = rng.randint(0, step)
        if rng.random() < 0.75:
            for y in range(-step + off, h, step):
                d.rectangle((0, y, w, y + band - 1), fill=other)
        else:
            for x in range(-step + off, w, step):
                d.rectangle((x, 0, x + band - 1, h), fill=other)
    elif pattern == "dotted":
        r = rng.uniform(2.6, 3.6)
        for row, y in enumerate(range(rng.randint(0, step), h, step)):
            shift = step / 2 if row % 2 else 0
            for x in range(rng.randint(0, step), w + step, step):
                cx = x + shift
                d.ellipse((cx - r, y - r, cx + r, y + r), fill=other)
    elif pattern == "checked":
        ox, oy = rng.randint(0, step), rng.randint(0, step)
        for j, y in enumerate(range(-oy, h, step)):
            for i, x in enumerate(range(-ox, w, step)):
                if (i + j) % 2:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=other)
    return img


@functools.lru_cache(maxsize=4)
def _gradient(size: tuple[int, int]) -> Image.Image:
    return Image.linear_gradient("L").resize(size).point(lambda v: v * 18 // 255)


def render(article: str, colour: str, pattern: str, rng: random.Random, *, size: tuple[int, int] = (60, 80)) -> bytes:
    """One product photo as JPEG bytes: drawn at 2x, then shrunk, maybe blurred, re-compressed twice."""
    w, h = size[0] * 2, size[1] * 2
    bg_level = rng.randint(222, 252)
    tint = [rng.randint(-5, 5) for _ in range(3)]
    bg = tuple(max(0, min(255, bg_level + t)) for t in tint)
    canvas = Image.new("RGB", (w, h), bg)
    if rng.random() < 0.5:  # soft floor shadow: real backgrounds are rarely flat
        shade = _gradient((w, h))
        canvas = Image.composite(Image.new("RGB", (w, h), tuple(c - 18 for c in bg)), canvas, shade)

    scale = rng.uniform(0.78, 1.0)
    bw, bh = w * scale, h * scale
    cx = w / 2 + rng.uniform(-0.07, 0.07) * w
    cy = h / 2 + rng.uniform(-0.06, 0.06) * h
    box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)

    mask = Image.new("L", (w, h), 0)
    SHAPES[article](ImageDraw.Draw(mask), box)
    angle = rng.uniform(-7, 7)
    mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy))

    base = _jitter_colour(COLOURS[colour], rng)
    garment = _texture((w, h), pattern, base, rng)
    # A darker rim stands in for a fold shadow and keeps white garments visible on white.
    edge = mask.filter(ImageFilter.MaxFilter(3)).point(lambda v: 255 if v > 40 else 0)
    rim = tuple(round(c * 0.6) for c in base)
    canvas.paste(rim, (0, 0, w, h), edge)
    canvas.paste(garment, (0, 0), mask)

    if article == "sneakers":  # white rubber sole: the cue that says "shoe" at 60x80
        sole = Image.new("L", (w, h), 0)
        ImageDraw.Draw(sole).rectangle(_sub(box, (0.05, 0.7, 0.96, 0.77)), fill=255)
        sole = sole.rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy))
        canvas.paste((185, 185, 180) if colour in ("black", "brown") else (62, 62, 66), (0, 0, w, h), sole)

    if rng.random() < 0.4:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.6)))
    small = canvas.resize(size, Image.Resampling.BILINEAR if rng.random() < 0.5 else Image.Resampling.LANCZOS)
    # Re-compressed twice, like thumbnails that went through a CMS and then a CDN.
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=rng.randint(45, 85))
    again = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    again.save(out, "JPEG", quality=rng.randint(30, 70))
    return out.getvalue()


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Demo entry point; the project's real CLI lives elsewhere, this just writes a folder."""
    ap = argparse.ArgumentParser(prog="python -m enclip_qdrant.catalog.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write (created if missing)")
    ap.add_argument("--n", type=int, default=200, help="number of products (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", dest="fmt", choices=("csv", "jsonl"), default="csv")
    ap.add_argument("--articles", nargs="+", metavar="A", help=f"subset of: {', '.join(ARTICLES)}")
    ap.add_argument("--colours", nargs="+", metavar="C", help=f"subset of: {', '.join(COLOURS)}")
    ap.add_argument("--patterns", nargs="+", metavar="P", help=f"subset of: {', '.join(PATTERNS)}")
    ap.add_argument("--size", nargs=2, type=int, default=(60, 80), metavar=("W", "H"))
    args = ap.parse_args(argv)
    try:
        root = make_catalog(
            args.out,
            args.n,
            seed=args.seed,
            articles=args.articles,
            colours=args.colours,
            patterns=args.patterns,
            size=tuple(args.size),
            fmt=args.fmt,
        )
    except ValueError as e:
        ap.error(str(e))
    table = "captions.csv" if args.fmt == "csv" else "catalog.jsonl"
    print(f"wrote {args.n} products to {root} ({table}, images/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
