"""`enclip-qdrant`: a thin typer shell over `enclip_qdrant.api` (parse, call the library, render)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from enclip_qdrant import api
from enclip_qdrant.errors import EnclipError
from enclip_qdrant.search import (
    DEFAULT_MAX_CLUSTERS,
    DEFAULT_OVERSAMPLE,
    DEFAULT_THRESHOLD,
    FILTER_HELP,
    parse_clusters,
    parse_filters,
)
from enclip_qdrant.store.base import EXTRA_INDEX_TYPES, CollectionOptions
from enclip_qdrant.training import TrainConfig

from . import render
from .progress import RichProgress

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ENCLIP on Qdrant: train an ensemble of CLIP models, index a catalog, search it.")
out = Console()
err = Console(stderr=True)

Home = Annotated[Path | None, typer.Option("--home", envvar="ENCLIP_HOME",
                                              help="Workspace folder (default: ./.enclip).")]
Url = Annotated[str | None, typer.Option("--url", envvar="QDRANT_URL",
                                            help="Qdrant server URL; without it the embedded engine is used.")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="QDRANT_API_KEY", help="Qdrant API key.")]
PreferGrpc = Annotated[bool, typer.Option("--prefer-grpc", help="Talk to the Qdrant server over gRPC (port 6334).")]
Timeout = Annotated[float | None, typer.Option("--timeout", help="Seconds per Qdrant server request (default 30); "
                                                 "transient failures are retried 3 times with backoff.")]
ImageCol = Annotated[str | None, typer.Option("--image-col", help="Column holding image paths.")]
TextCol = Annotated[str | None, typer.Option("--text-col", help="Column holding captions/titles.")]
IdCol = Annotated[str | None, typer.Option("--id-col", help="Column holding product ids.")]
Members = Annotated[int, typer.Option("--members", "-n", min=1, help="Ensemble size.")]
Epochs = Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs per member (default: preset's).")]
Batch = Annotated[int | None, typer.Option("--batch-size", min=2, help="Contrastive batch (default: preset's).")]
Seed = Annotated[int, typer.Option("--seed", help="Base seed; member i uses seed*1000+i.")]
Preset = Annotated[str, typer.Option("--preset", help="Model size: tiny (tests) or small (default).")]
Clusters = Annotated[str, typer.Option("--clusters", help="Number of k-means clusters, or 'auto' (silhouette).")]
Diversity = Annotated[str, typer.Option("--diversity", help="'seed' (default) or 'bootstrap' resampling.")]
Model = Annotated[str | None, typer.Option("--model", help="open_clip model name to fine-tune (e.g. ViT-B-32).")]
Pretrained = Annotated[str | None, typer.Option("--pretrained", help="Checkpoint: tag, hf-hub:ID or a "
                                                  "local .safetensors / open_clip folder.")]
Parallel = Annotated[int | None, typer.Option("--parallel", min=1, help="Members trained at once, each in its "
                                              "own process on its share of the cores (default: one per core, "
                                              "up to 4; 1 = one after another).")]
Precision = Annotated[str, typer.Option("--precision", help="Training arithmetic: auto (bf16 where the CPU has "
                                        "it natively, else fp32), bf16 or fp32.")]


class Quantization(str, Enum):
    none = "none"
    int8 = "int8"


def _conn(home: Path | None, url: str | None, api_key: str | None, prefer_grpc: bool = False,
          timeout: float | None = None) -> api.Connection:
    """Server-only settings go in `options`, which reach ServerStore and are unused by the embedded store."""
    options: dict[str, Any] = {}
    if prefer_grpc:
        options["prefer_grpc"] = True
    if timeout is not None:
        options["timeout"] = timeout
    return api.Connection(home=home, url=url, api_key=api_key, options=options)


def _collection_options(on_disk: bool, quantization: str, shards: int | None, replicas: int | None,
                        index_fields: list[str] | None) -> CollectionOptions | None:
    """None when no flag was given, so a plain `index` creates exactly what it always did."""
    indexes: dict[str, str] = {}
    for spec in index_fields or []:
        name, sep, kind = spec.rpartition(":")
        if not sep or kind.lower() not in EXTRA_INDEX_TYPES:
            name, kind = spec, "keyword"
        if not name.strip():
            raise EnclipError(f"--index-field takes a payload field name (NAME or NAME:integer), not {spec!r}")
        indexes[name.strip()] = kind.lower()
    if not (on_disk or quantization != "none" or shards or replicas or indexes):
        return None
    return CollectionOptions(on_disk_vectors=on_disk, quantization=quantization,  # type: ignore[arg-type]
                             shard_number=shards, replication_factor=replicas, payload_indexes=indexes)


def _config(members: int, preset: str, epochs: int | None, batch_size: int | None, seed: int, clusters: str,
            diversity: str, model: str | None, pretrained: str | None, parallel: int | None = None,
            precision: str = "auto") -> TrainConfig:
    if diversity not in ("seed", "bootstrap"):
        raise EnclipError(f"--diversity must be 'seed' or 'bootstrap', not {diversity!r}")
    if clusters != "auto" and not clusters.isdigit():
        raise EnclipError(f"--clusters must be a number or 'auto', not {clusters!r}")
    return TrainConfig(members=members, preset=preset, epochs=epochs, batch_size=batch_size, seed=seed,
                       clusters=None if clusters == "auto" else int(clusters), diversity=diversity,  # type: ignore[arg-type]
                       base_model=model, pretrained=pretrained, parallel=parallel,
                       precision=precision)  # type: ignore[arg-type]


@app.command()
def train(
    catalog: Annotated[Path, typer.Argument(help="Catalog folder or table file (CSV/JSONL/Parquet).")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Bundle folder.")] = None,
    members: Members = 5, preset: Preset = "small", epochs: Epochs = None, batch_size: Batch = None, seed: Seed = 0,
    clusters: Clusters = "auto", diversity: Diversity = "seed", model: Model = None, pretrained: Pretrained = None,
    parallel: Parallel = None, precision: Precision = "auto",
    image_col: ImageCol = None, text_col: TextCol = None, id_col: IdCol = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run with other settings.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    home: Home = None,
) -> None:
    """Train an ensemble of CLIP members and fit the clusters; resumes an interrupted run."""
    config = _config(members, preset, epochs, batch_size, seed, clusters, diversity, model, pretrained, parallel,
                     precision)
    with RichProgress() as progress:
        bundle = api.train(catalog, out=out_dir, config=config, conn=_conn(home, None, None), overwrite=overwrite,
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
    parallel: Parallel = None, precision: Precision = "auto",
    image_col: ImageCol = None, text_col: TextCol = None, id_col: IdCol = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
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
) -> None:
    """Embed every image with every member into a Qdrant collection (training first if needed)."""
    options = _collection_options(on_disk, quantization.value, shards, replicas, index_fields)
    config = _config(members, preset, epochs, batch_size, seed, clusters, diversity, model, pretrained, parallel,
                     precision)
    if config == TrainConfig():
        config = None  # no training flag given: an existing bundle is used whatever it was trained with
    with RichProgress() as progress:
        report = api.index(catalog, bundle=bundle, collection=collection,
                           conn=_conn(home, url, api_key, prefer_grpc, timeout), config=config, prune=prune,
                           progress=progress, options=options, blue_green=blue_green, confirm=yes,
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
    explain: Annotated[bool, typer.Option("--explain", help="Show each member's own rank.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a PNG contact sheet.")] = None,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
    timeout: Timeout = None,
) -> None:
    """Search: encode with every member, route to clusters, one fused Qdrant query."""
    mode, parsed = parse_clusters(clusters), parse_filters(filters)
    conn = _conn(home, url, api_key, prefer_grpc, timeout)
    resp = api.query(text, image=image, collection=collection, bundle=bundle, conn=conn,
                     top_k=top_k, clusters=mode, fusion=fusion, filters=parsed, explain=explain,
                     threshold=threshold, max_clusters=max_clusters, oversample=oversample)
    if sheet:
        meta_root = _catalog_root(conn, collection)
        render.contact_sheet(resp, meta_root, sheet)
        err.print(f"contact sheet written to {sheet}")
    if json_out:
        render.print_json(out, resp.to_dict(explain))
    else:
        out.print(render.search_table(resp, explain, out.size.width))


def _catalog_root(conn: api.Connection, collection: str | None) -> Path | None:
    data = api.info(collection or conn.workspace.default_collection(), conn=conn)
    root = data["collections"][0].metadata.get("catalog")
    return Path(root) if root else None


@app.command()
def info(
    collection: Annotated[str | None, typer.Argument(help="One collection (default: all).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
    timeout: Timeout = None,
) -> None:
    """Collections in the store: points, named vectors, payload indexes, bundle, cluster sizes."""
    data = api.info(collection, conn=_conn(home, url, api_key, prefer_grpc, timeout))
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
    timeout: Timeout = None,
) -> None:
    """Point the name back at the collection a blue/green index replaced; queries use its bundle again."""
    report = api.rollback(collection, conn=_conn(home, url, api_key, prefer_grpc, timeout))
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
        report = api.push(collection, url, api_key, home=home, batch_size=batch_size, progress=progress)
    if json_out:
        render.print_json(out, vars(report))
    else:
        out.print(render.push_table(report))


from .eval_cmd import eval_command  # noqa: E402 - here, after the shared options it imports from this module

app.command("eval")(eval_command)


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
