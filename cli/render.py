"""How results look in a terminal: rich tables and JSON. (The PNG contact sheet is library behaviour:
`enclip_qdrant.contact_sheet`.)"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from enclip_qdrant import CollectionMeta

if TYPE_CHECKING:
    from enclip_qdrant import IndexReport, IndexState, PushReport, SearchResponse

SHOWN_FIELDS = ("articleType", "baseColour", "gender", "pattern", "subCategory")


def print_json(console: Console, obj: Any) -> None:
    console.print_json(json.dumps(obj, default=str))


def search_table(resp: SearchResponse, explain: bool, width: int = 120) -> Table:
    clusters = ", ".join(f"{c['id']}{' ' + repr(c['label']) if c.get('label') else ''} (p={c['p']:.2f})"
                         for c in resp.clusters) or "all"
    title = f"{resp.query.get('text') or resp.query.get('image')!r}  clusters: {clusters}"
    t = Table(title=title, title_justify="left")
    for col, kw in (("#", {"justify": "right"}), ("id", {}), ("score", {"justify": "right"}),
                    ("cl", {"no_wrap": True, "overflow": "ellipsis", "max_width": 18}),
                    ("text", {"overflow": "fold", "min_width": 24, "ratio": 3})):
        t.add_column(col, **kw)
    members = list(resp.results[0].member_ranks or {}) if explain and resp.results else []
    # The title matters most: on a narrow terminal, show fewer attribute columns rather than squeeze it.
    room = max(0, (width - 60 - 5 * len(members)) // 16)
    fields = [f for f in SHOWN_FIELDS if any(f in r.payload for r in resp.results)][:room]
    for f in fields:
        t.add_column(f, no_wrap=True, overflow="ellipsis", max_width=14, ratio=1)
    for name in members:
        t.add_column(name, justify="right")
    for r in resp.results:
        row = [str(r.rank), str(r.payload.get("product_id", r.id)), f"{r.score:.4f}",
               f"{r.cluster} {r.cluster_label}" if r.cluster_label else str(r.cluster),
               str(r.payload.get("text") or r.payload.get("image", ""))]
        row += [str(r.payload.get(f, "")) for f in fields]
        if explain:  # each list's own rank, and its share of the fused score
            shares = r.shares or {}
            row += [f"{v} ({shares[m]:.0%})" if v and m in shares else (str(v) if v else "-")
                    for m, v in (r.member_ranks or {}).items()]
        t.add_row(*row)
    return t


def index_table(report: IndexReport) -> Table:
    from enclip_qdrant import failed_summary  # indexing loads the models: only after an index run

    t = Table(title=f"indexed into {report.collection!r} ({report.store})", show_header=False, title_justify="left")
    for k in ("added", "changed", "payload_updated", "unchanged", "deleted"):
        t.add_row(k.replace("_", " "), f"{getattr(report, k):,}")
    t.add_row("failed", failed_summary(report.failed))
    t.add_row("catalog rows skipped", f"{report.skipped_rows:,}")
    t.add_row("bundle", report.bundle)
    if report.physical and report.physical != report.collection:
        switch = f"switched from {report.previous!r}" if report.previous else "new"
        t.add_row("serves", f"{report.physical} ({switch})" if report.switched else report.physical)
    t.add_row("search index", index_state(report.index))
    t.add_row("seconds", f"{report.seconds:,.1f}")
    if report.embedded:
        tm = report.timings
        rate = report.embedded / max(sum(tm.values()), 1e-9)
        t.add_row("time split", f"decode {tm['decode']:,.1f} s, encode {tm['encode']:,.1f} s, "
                                f"upsert {tm['upsert']:,.1f} s ({rate:,.0f} images/s)")
    return t


def push_table(report: PushReport) -> Table:
    t = Table(title=f"pushed {report.collection!r} ({report.physical}) to {report.url}", show_header=False,
              title_justify="left")
    t.add_row("copied", f"{report.copied:,}")
    t.add_row("skipped (already there)", f"{report.skipped:,}")
    t.add_row("seconds", f"{report.seconds:,.1f}")
    return t


def export_table(record: dict[str, Any]) -> Table:
    """One row per member: its ONNX files and how far each tower is from torch on the parity samples."""
    t = Table(title=f"ONNX towers (opset {record.get('opset')}, from bundle {record.get('of_fingerprint')})",
              title_justify="left")
    for col in ("member", "image tower", "text tower", "max |diff| image / text"):
        t.add_column(col)
    for name, m in record.get("members", {}).items():
        p = m.get("parity", {})
        t.add_row(name, m["image"]["path"], m["text"]["path"], f"{p.get('image', 0):.1e} / {p.get('text', 0):.1e}")
    shared = record.get("shared_text")
    if shared:
        t.add_row("(shared text encoder)", "", shared["model"]["path"], f"- / {shared.get('parity', 0):.1e}")
    return t


def index_state(state: IndexState | None) -> str:
    """One line: whether the member vectors are searched through HNSW graphs or exactly."""
    if state is None:
        return "unknown"
    done = f"{state.indexed_vectors:,} of {state.vectors:,} member vectors in HNSW graphs"
    segments = f", {state.segments} segments" if state.segments is not None else ""
    if not state.hnsw:
        return f"exact search (HNSW off; {done}{segments})"
    rest = "; the rest are searched exactly" if state.indexed_vectors < state.vectors else ""
    return f"HNSW on: {done}{segments}{rest}"


def index_dict(report: IndexReport) -> dict[str, Any]:
    return asdict(report) | {"failed": [{"id": i, "error": e} for i, e in report.failed]}


def info_tables(data: dict[str, Any]) -> list[Table]:
    store = data["store"]
    tables = []
    if not data["collections"]:
        t = Table(title=f"{store['kind']} store at {store['location']}: no collections")
        return [t]
    for c in data["collections"]:
        names = f"{', '.join(c.aliases)} -> {c.name}" if c.aliases else c.name
        t = Table(title=f"{names}{' (default)' if c.default else ''}  [{store['kind']}: {store['location']}]",
                  show_header=False, title_justify="left")
        t.add_row("points", f"{c.points:,}")
        t.add_row("vectors", ", ".join(f"{k} ({v}d, cosine)" for k, v in c.vectors.items()))
        if c.sparse_vectors:
            recipe = CollectionMeta.from_dict(c.metadata).lexical or {}
            fields = ", ".join(recipe.get("fields", []))
            t.add_row("sparse vectors", ", ".join(f"{k} (BM25, idf)" for k in c.sparse_vectors)
                      + (f": title + {fields}" if fields else ": title"))
        t.add_row("payload indexes", ", ".join(f"{k}: {v}" for k, v in c.payload_schema.items()))
        meta = CollectionMeta.from_dict(c.metadata)
        t.add_row("bundle", f"{c.bundle_fingerprint}  {meta.bundle_path or ''}")
        if c.cluster_labels:  # one line per cluster: id, size and what it holds
            t.add_row("clusters", "\n".join(f"{k}: {v:,}  {c.cluster_labels.get(k, '')}".rstrip()
                                            for k, v in c.clusters.items()))
        else:  # a bundle from before labels, or not on this machine: ids and sizes
            t.add_row("clusters", "  ".join(f"{k}: {v:,}" for k, v in c.clusters.items()))
        t.add_row("search index", index_state(c.index))
        t.add_row("catalog", meta.catalog or "")
        tables.append(t)
    return tables
