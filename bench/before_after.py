"""Before/after contact sheets: the same shopper queries on two collections (e.g. the old and the new default
bundle), one PNG per query with a row of results per collection, plus a markdown page listing each top 10
as "title [articleType, baseColour]" so the pictures can be checked in words.

    python bench/before_after.py --before HOME:COLLECTION:LABEL --after HOME:COLLECTION:LABEL \
        --out docs/before-after "red floral dress" "black leather handbag" ...

Each side is searched with the library's default query settings (`Searcher.search`), as `enclip-qdrant query`
would; the catalog's images are read from the folder each collection records.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from enclip_qdrant import Connection, Searcher, contact_sheet


def side(spec: str) -> tuple[Path, str, str]:
    home, collection, label = spec.split(":", 2)
    return Path(home), collection, label


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def stack(parts: list[tuple[str, Path]], out: Path) -> None:
    images = [(label, Image.open(p).convert("RGB")) for label, p in parts]
    width = max(im.width for _, im in images)
    sheet = Image.new("RGB", (width, sum(im.height + 22 for _, im in images)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for label, im in images:
        draw.rectangle([0, y, width, y + 20], fill=(230, 230, 230))
        draw.text((6, y + 4), label, fill="black")
        sheet.paste(im, (0, y + 22))
        y += im.height + 22
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=side, required=True, help="HOME:COLLECTION:LABEL")
    ap.add_argument("--after", type=side, required=True, help="HOME:COLLECTION:LABEL")
    ap.add_argument("--out", type=Path, default=Path("docs/before-after"))
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("queries", nargs="+")
    a = ap.parse_args()
    lines = ["# Before / after: the same queries on two bundles", "",
             f"- before: {a.before[2]}", f"- after: {a.after[2]}", "",
             "Default query settings on both sides (`enclip-qdrant query TEXT`); each top 10 as "
             "title [articleType, baseColour].", ""]
    searchers = [(label, Searcher(coll, conn=Connection(home=home))) for home, coll, label in (a.before, a.after)]
    with tempfile.TemporaryDirectory() as tmp:
        for q in a.queries:
            parts, lines = [], [*lines, f"## {q}", "", f"![{q}]({slug(q)}.png)", ""]
            for i, (label, s) in enumerate(searchers):
                resp = s.search(q, top_k=a.top_k)
                png = Path(tmp) / f"{i}.png"
                contact_sheet(resp, png)
                parts.append((f"{label}: {q}", png))
                rows = [f"{r.payload.get('text', '')} [{r.payload.get('articleType', '?')}, "
                        f"{r.payload.get('baseColour', '?')}]" for r in resp.results]
                lines += [f"**{label}**: " + "; ".join(rows), ""]
            stack(parts, a.out / f"{slug(q)}.png")
            print(f"wrote {a.out / (slug(q) + '.png')}")
    for _, s in searchers:
        s.close()
    (a.out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out / 'README.md'}")


if __name__ == "__main__":
    main()
