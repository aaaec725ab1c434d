"""`enclip-qdrant eval CATALOG`: the held-out comparison of `enclip_qdrant.evaluate`, as a command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from enclip_qdrant import EnclipError, api

from . import options as opt
from . import render
from .options import err, out, train_config
from .progress_bars import RichProgress

if TYPE_CHECKING:
    from enclip_qdrant import EvalReport


def _header(col: str) -> str:
    short = {"mrr": "MRR", "routing_accuracy": "route", "clusters_searched": "clus", "latency_ms": "ms"}
    return short.get(col) or col.replace("recall", "R").replace("ndcg", "nDCG").replace("attribute_precision", "attr") \
        .replace("type_precision", "type")


def report_tables(report: EvalReport) -> list[Table]:
    """One table per query set, one row per ranking, the best value of each column in bold."""
    from enclip_qdrant import best_values, format_value

    cols = report.columns()
    tables = []
    for name, info in report.query_sets.items():
        rows = report.rows_for(name)
        chance = ", ".join(f"R@{k} {v:.3f}" for k, v in info.chance.items())
        t = Table(title=f"{name}: {info.queries} quer{'y' if info.queries == 1 else 'ies'} on "
                        f"{report.test_products} held-out products (random ranking: {chance})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        t.add_column("ranking", min_width=13)
        for c in cols:
            t.add_column(_header(c), justify="right", no_wrap=True)
        best = best_values(rows, cols, report.top_k)
        for r in rows:
            m = r.metrics(report.top_k)
            t.add_row(r.ranking, *[(f"[bold]{format_value(c, m[c])}[/]" if m[c] is not None and m[c] == best.get(c)
                                    else format_value(c, m[c])) for c in cols])
        tables.append(t)
    for title, pcols, prows in report.protocol_tables():
        t = Table(title=f"protocol {title}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
        t.add_column("ranking", min_width=13)
        for c in pcols:
            t.add_column(c, justify="right", no_wrap=True)
        best = {c: max(r.metrics[c] for r in prows) for c in pcols}
        for r in prows:
            t.add_row(r.ranking, *[f"[bold]{r.metrics[c]:.3f}[/]" if r.metrics[c] == best[c] else f"{r.metrics[c]:.3f}"
                                   for c in pcols])
        tables.append(t)
    return tables


def eval_command(
    catalog: Annotated[Path, typer.Argument(help="Catalog folder or table file (CSV/JSONL/Parquet).")],
    test_fraction: Annotated[float | None, typer.Option("--test-fraction", help="Share of products held out "
                                                        "for the test (at least 20); default 0.2, or with "
                                                        "--bundle the whole catalog (1).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test split and of the members "
                                      "(member i uses seed*1000+i).")] = 0,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Evaluate this bundle instead of training one; "
                                                "it must not have seen the test split.")] = None,
    queries: Annotated[Path | None, typer.Option("--queries", help='JSONL of {"query": ..., "relevant": '
                                                 '{"field": value}}, scored as a second query set.')] = None,
    protocol: Annotated[Path | None, typer.Option("--protocol", help="Folder of public benchmark ground truth "
                                                  "(Marqo's KAGL files, {query: {product id: 1}}), scored over "
                                                  "the held-out products.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results per query.")] = 10,
    members: opt.Members = 5, preset: opt.Preset = "small", epochs: opt.Epochs = None, batch_size: opt.Batch = None,
    clusters: opt.Clusters = "auto", diversity: opt.Diversity = "seed", model: opt.Model = None,
    pretrained: opt.Pretrained = None,
    parallel: opt.Parallel = None, precision: opt.Precision = "auto", text_encoder: opt.TextEncoder = None,
    field_cols: opt.FieldCols = None, towers: opt.Towers = None, device: opt.Device = "auto",
    image_col: opt.ImageCol = None, text_col: opt.TextCol = None, id_col: opt.IdCol = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown tables.")] = False,
    home: opt.Home = None,
) -> None:
    """Held-out check of ENCLIP's claim on your catalog: each member alone vs the ensemble vs routing."""
    if json_out and markdown:
        raise EnclipError("--json and --markdown are exclusive: choose one")
    config = None if bundle else train_config(members, preset, epochs, batch_size, seed, clusters, diversity, model,
                                         pretrained, parallel, precision, text_encoder, field_cols, towers,
                                         device)
    workdir = api.eval_workdir(catalog, api.Connection(home))  # kept: an interrupted evaluation resumes
    with RichProgress() as progress:
        report = api.evaluate(catalog, bundle=bundle, config=config, test_fraction=test_fraction, seed=seed,
                              queries_file=queries, top_k=top_k, workdir=workdir, progress=progress,
                              protocol=protocol, device=device,
                              columns={"image_col": image_col, "text_col": text_col, "id_col": id_col})
    if json_out:
        render.print_json(out, report.to_dict())
    elif markdown:
        out.print(report.to_markdown(), markup=False, highlight=False, soft_wrap=True)
    else:
        for t in report_tables(report):
            out.print(t)
        err.print(f"bundle {report.bundle_fingerprint} ({report.bundle_path}); {report.train_products or '?'} "
                  f"train / {report.test_products} test products; {report.clusters} clusters; encoding a query "
                  f"{report.encode_ms:.1f} ms (ms: the search alone); routed = the RRF ensemble searching only "
                  f"the predicted clusters",
                  highlight=False)
