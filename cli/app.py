"""`enclip-qdrant`: a thin typer shell over `enclip_qdrant.api` (parse, call the library, render)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from enclip_qdrant import (
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_OVERSAMPLE,
    DEFAULT_TEXT_WEIGHT,
    DEFAULT_THRESHOLD,
    FILTER_HELP,
    EnclipError,
    SearchOptions,
    api,
    parse_clusters,
    parse_filters,
)
from enclip_qdrant import contact_sheet as write_contact_sheet

from . import render
from .eval_cmd import eval_command
from .options import (
    ApiKey,
    Batch,
    Clusters,
    Device,
    Diversity,
    EngineOpt,
    Epochs,
    FieldCols,
    GrpcPort,
    Home,
    IdCol,
    ImageCol,
    Members,
    Model,
    Parallel,
    Precision,
    PreferGrpc,
    Preset,
    Pretrained,
    Quantization,
    Seed,
    TextCol,
    TextEncoder,
    Timeout,
    Towers,
    Url,
    collection_options,
    conn_for,
    err,
    out,
    train_config,
)
from .progress_bars import RichProgress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ENCLIP on Qdrant: train an ensemble of CLIP models, index a catalog, search it.")
@app.command()
def train(
    catalog: Annotated[Path, typer.Argument(help="Catalog folder or table file (CSV/JSONL/Parquet).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Bundle folder.")] = None,
    members: Members = 5, preset: Preset = "small", epochs: Epochs = None, batch_size: Batch = None, seed: Seed = 0,
    clusters: Clusters = "auto", diversity: Diversity = "seed", model: Model = None, pretrained: Pretrained = None,
    parallel: Parallel = None, precision: Precision = "auto", text_encoder: TextEncoder = None,
    field_cols: FieldCols = None, towers: Towers = None, device: Device = "auto",
    image_col: ImageCol = None, text_col: TextCol = None, id_col: IdCol = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run with other settings.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    home: Home = None,
) -> None:
    """Train an ensemble of CLIP members and fit the clusters; resumes an interrupted run."""
    config = train_config(members, preset, epochs, batch_size, seed, clusters, diversity, model, pretrained, parallel,
                          precision, text_encoder, field_cols, towers, device)
    with RichProgress() as progress:
        bundle = api.train(catalog, out=out_dir, config=config, conn=conn_for(home, None, None), overwrite=overwrite,
                           columns={"image_col": image_col, "text_col": text_col, "id_col": id_col},
                           progress=progress)
    if json_out:
        render.print_json(out, bundle.manifest)
    else:
        m = bundle.manifest
        err.print(f"[green]bundle {bundle.fingerprint}[/] at {bundle.path}: {len(m['members'])} members, "
                  f"{m['clusters']['k']} clusters; ensemble val R@10 {m['validation']['ensemble']['r@10']:.3f}")


@app.command()
def index(
    catalog: Annotated[Path, typer.Argument(help="Catalog folder or table file.")],
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Trained bundle; without it, train first.")] = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Default: the catalog folder's name.")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete products whose id is gone from the catalog "
                                        "table (not rows whose image failed to load).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm a --prune deleting more than 20% of the "
                                      "collection.")] = False,
    members: Members = 5, preset: Preset = "small", epochs: Epochs = None, batch_size: Batch = None, seed: Seed = 0,
    clusters: Clusters = "auto", diversity: Diversity = "seed", model: Model = None, pretrained: Pretrained = None,
    parallel: Parallel = None, precision: Precision = "auto", text_encoder: TextEncoder = None,
    field_cols: FieldCols = None, towers: Towers = None, device: Device = "auto",
    image_col: ImageCol = None, text_col: TextCol = None, id_col: IdCol = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
    grpc_port: GrpcPort = 6334,
    timeout: Timeout = None,
    on_disk: Annotated[bool, typer.Option("--on-disk", help="New collection: vectors on disk (memory-mapped), "
                                                           "not in RAM.")] = False,
    quantization: Annotated[Quantization, typer.Option("--quantization", help="New collection: int8 scalar "
                                                       "quantization kept in RAM (4x smaller, rescored).")]
    = Quantization.none,
    shards: Annotated[int | None, typer.Option("--shards", min=1, help="New collection: shards, spread over a "
                                                                       "cluster's nodes.")] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1, help="New collection: copies of each "
                                                                           "shard (cluster).")] = None,
    index_fields: Annotated[list[str] | None, typer.Option("--index-field", help="New collection: payload "
                                                           "index on a catalog field for --filter (keyword; "
                                                           "NAME:integer for numbers); repeatable.")] = None,
    blue_green: Annotated[bool, typer.Option("--blue-green", help="Collection built by another bundle: build "
                                             "a new one beside it and switch the name over when complete "
                                             "(`rollback` undoes it).")] = False,
    engine: EngineOpt = "auto",
    hnsw: Annotated[bool | None, typer.Option("--hnsw/--no-hnsw", help="Embedded store: build HNSW for the "
                                              "member vectors after the run (default: from 50,000 points, or "
                                              "when the collection has it).", show_default=False)] = None,
) -> None:
    """Embed every image with every member into a Qdrant collection (training first if needed)."""
    options = collection_options(on_disk, quantization.value, shards, replicas, index_fields)
    config = train_config(members, preset, epochs, batch_size, seed, clusters, diversity, model, pretrained, parallel,
                          precision, text_encoder, field_cols, towers)
    if config == type(config)():
        config = None  # no training flag given: an existing bundle is used whatever it was trained with
    with RichProgress() as progress:
        conn = conn_for(home, url, api_key, prefer_grpc, timeout, grpc_port)
        report = api.index(catalog, bundle=bundle, collection=collection, conn=conn, config=config, prune=prune,
                           progress=progress, options=options, blue_green=blue_green, confirm=yes, engine=engine,
                           hnsw=hnsw, device=device,
                           columns={"image_col": image_col, "text_col": text_col, "id_col": id_col})
    if options is not None and not report.created:
        err.print(f"[yellow]note:[/] collection {report.collection!r} already existed, so its layout options "
                  "(--on-disk, --quantization, --shards, --replicas, --index-field) were not applied; "
                  "index into a new --collection to use them", highlight=False)
    if json_out:
        render.print_json(out, render.index_dict(report))
    else:
        out.print(render.index_table(report))


@app.command()
def query(
    text: Annotated[str | None, typer.Argument(help="What to look for, e.g. 'red floral dress'.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Query by a photo (with or without text).")] = None,
    collection: Annotated[str | None, typer.Option("--collection", help="Default: the last indexed.")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Default: the collection's own.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results to return.")] = 10,
    clusters: Annotated[str, typer.Option("--clusters", help="'auto' (routing), 'all', or ids like 3,7.")] = "auto",
    fusion: Annotated[str, typer.Option("--fusion", help="rrf or dbsf.")] = "rrf",
    filters: Annotated[list[str] | None, typer.Option("--filter", help=FILTER_HELP)] = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0,
                                             help="Routing: probability mass to cover.")] = DEFAULT_THRESHOLD,
    max_clusters: Annotated[int, typer.Option("--max-clusters", min=1, help="Routing cap.")] = DEFAULT_MAX_CLUSTERS,
    oversample: Annotated[int, typer.Option("--oversample", min=1, help="Prefetch k x this.")] = DEFAULT_OVERSAMPLE,
    explain: Annotated[bool, typer.Option("--explain", help="Show each list's own rank (members, text) and its "
                                                            "share of the fused score.")] = False,
    no_text: Annotated[bool, typer.Option("--no-text", help="Dense only: leave out the collection's text "
                                                            "(BM25) vector.")] = False,
    text_weight: Annotated[float, typer.Option("--text-weight", min=0.0, help="Say of the text (BM25) list "
                                               "against the whole ensemble: its RRF weight is this x the members "
                                               "(1: as much say as all members together; RRF only); 0 = --no-text.")
                           ] = DEFAULT_TEXT_WEIGHT,
    hnsw_ef: Annotated[int | None, typer.Option("--hnsw-ef", min=1, help="HNSW candidates per list (default: "
                                                "Qdrant's); more finds more, slower.")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Score every vector (no HNSW): slower, the exact "
                                                        "answer.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a PNG contact sheet.")] = None,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
    grpc_port: GrpcPort = 6334,
    timeout: Timeout = None, engine: EngineOpt = "auto",
) -> None:
    """Search: encode with every member, route to clusters, one fused Qdrant query."""
    conn = conn_for(home, url, api_key, prefer_grpc, timeout, grpc_port)
    options = SearchOptions(top_k=top_k, clusters=parse_clusters(clusters), fusion=fusion,  # type: ignore[arg-type]
                            threshold=threshold, max_clusters=max_clusters, oversample=oversample, explain=explain,
                            text_weight=0.0 if no_text else text_weight, hnsw_ef=hnsw_ef, exact=exact)
    resp = api.query(text, image=image, collection=collection, bundle=bundle, conn=conn,
                     filters=parse_filters(filters), options=options, engine=engine)
    if sheet:
        write_contact_sheet(resp, sheet)
        err.print(f"contact sheet written to {sheet}")
    if json_out:
        render.print_json(out, resp.to_dict(explain))
    else:
        out.print(render.search_table(resp, explain, out.size.width))




@app.command()
def info(
    collection: Annotated[str | None, typer.Argument(help="One collection (default: all).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a PNG with a row of sample images per "
                                               "cluster, titled with its label (the collection given, or the "
                                               "default one).")] = None,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
    grpc_port: GrpcPort = 6334,
    timeout: Timeout = None,
) -> None:
    """Collections in the store: points, named vectors, payload indexes, bundle, clusters and their labels."""
    conn = conn_for(home, url, api_key, prefer_grpc, timeout, grpc_port)
    data = api.info(collection, conn=conn)
    if sheet:
        api.cluster_sheet(sheet, collection, conn=conn)
        err.print(f"clusters sheet written to {sheet}")
    if json_out:
        render.print_json(out, {"store": data["store"], "collections": [vars(c) for c in data["collections"]]})
    else:
        for t in render.info_tables(data):
            out.print(t)


@app.command()
def rollback(
    collection: Annotated[str | None, typer.Argument(help="Collection name (default: the last indexed).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
    grpc_port: GrpcPort = 6334,
    timeout: Timeout = None,
) -> None:
    """Point the name back at the collection a blue/green index replaced; queries use its bundle again."""
    report = api.rollback(collection, conn=conn_for(home, url, api_key, prefer_grpc, timeout, grpc_port))
    if json_out:
        render.print_json(out, vars(report))
    else:
        err.print(f"[green]{report.collection!r}[/] now serves {report.switched_to!r} (was {report.switched_from!r});"
                  f" bundle {report.bundle}", highlight=False)


@app.command()
def push(
    collection: Annotated[str | None, typer.Argument(help="Embedded collection (default: the last indexed).")]
    = None,
    url: Annotated[str | None, typer.Option("--url", envvar="QDRANT_URL", help="Target Qdrant server URL "
                                            "(required).")] = None,
    api_key: ApiKey = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Points per upsert.")] = 256,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: Home = None,
) -> None:
    """Copy an embedded collection (vectors, payload, metadata, name) to a Qdrant server; resumable."""
    if not url:
        raise EnclipError("push needs a target: --url URL (or QDRANT_URL)")
    with RichProgress() as progress:
        report = api.push(collection, api.Connection(url=url, api_key=api_key), source=api.Connection(home=home),
                          batch_size=batch_size, progress=progress)
    if json_out:
        render.print_json(out, vars(report))
    else:
        out.print(render.push_table(report))


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(help="A trained bundle folder.")],
    force: Annotated[bool, typer.Option("--force", help="Export again even if the bundle has ONNX towers.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest's onnx record as JSON.")] = False,
) -> None:
    """Add ONNX towers to a bundle (checked against torch), so queries and indexing run without torch."""
    with RichProgress() as progress:
        record = api.export(bundle, force=force, progress=progress)
    if json_out:
        render.print_json(out, record)
    else:
        out.print(render.export_table(record))


app.command("eval")(eval_command)
from .serve_cmd import serve_command  # noqa: E402, I001 - the query service (enclip_qdrant.service)
app.command("serve")(serve_command)


def main() -> None:
    try:
        app()
    except EnclipError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt as e:
        err.print(f"[yellow]{e}[/]" if str(e) else "[yellow]interrupted:[/] finished members and indexed "
                  "batches are kept; run the same command again to resume", highlight=False)
        sys.exit(130)
