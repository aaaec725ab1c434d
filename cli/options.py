"""The options the commands share (typed `Annotated` declarations), the consoles, and the small builders that
turn flags into the library's typed objects. Commands import from here; nothing here imports a command.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from enclip_qdrant import EXTRA_INDEX_TYPES, CollectionOptions, EnclipError, ServerOptions, api

if TYPE_CHECKING:
    from enclip_qdrant import TrainConfig

out = Console()
err = Console(stderr=True)

Home = Annotated[Path | None, typer.Option("--home", envvar="ENCLIP_HOME",
                                              help="Workspace folder (default: ./.enclip).")]
Url = Annotated[str | None, typer.Option("--url", envvar="QDRANT_URL",
                                            help="Qdrant server URL; without it the embedded engine is used.")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="QDRANT_API_KEY", help="Qdrant API key.")]
PreferGrpc = Annotated[bool, typer.Option("--prefer-grpc",
                                          help="Talk to the Qdrant server over gRPC (on --grpc-port).")]
GrpcPort = Annotated[int, typer.Option("--grpc-port", envvar="QDRANT_GRPC_PORT", min=1, max=65535,
                                       help="The server's gRPC port, used with --prefer-grpc (Qdrant's default 6334).")]
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
EngineOpt = Annotated[str, typer.Option("--engine", envvar="ENCLIP_ENGINE",
                                        help="What encodes: onnx (ONNX Runtime, no torch), torch, or auto (onnx "
                                             "when the bundle has ONNX towers).")]
Device = Annotated[str, typer.Option("--device", envvar="ENCLIP_DEVICE",
                                     help="Where models run: auto (a CUDA GPU, else Apple MPS, else the CPU), cpu, "
                                          "cuda or mps. Training on CUDA uses mixed precision (bf16, or fp16 with "
                                          "a gradient scaler); ONNX Runtime uses its CUDA provider when "
                                          "onnxruntime-gpu is installed.")]
TextEncoder = Annotated[str | None, typer.Option("--text-encoder", help="Text tower recipe: minilm (members share a "
                                                 "frozen pretrained MiniLM, each learns an image tower + linear "
                                                 "head) or none (open_clip text towers from scratch); default: "
                                                 "the preset's (small: minilm).")]

FieldCols = Annotated[str | None, typer.Option("--field-cols", help="Field-aware training: catalog columns whose "
                                               "values become extra positive texts ('blue shirts'), trained with a "
                                               "multi-positive loss: auto (the categorical columns), none (titles "
                                               "only) or a,b,c; default: the preset's (small: auto).")]
Towers = Annotated[str | None, typer.Option("--towers", help="Members' image towers: same (the preset's own for every "
                                     "member), mixed (members cycle through a ViT/16, a ModifiedResNet and a "
                                     "ViT/8) or resnet (three ModifiedResNet shapes); default: the preset's "
                                     "(small: resnet).")]


class Quantization(str, Enum):
    none = "none"
    int8 = "int8"


def conn_for(home: Path | None, url: str | None, api_key: str | None, prefer_grpc: bool = False,
             timeout: float | None = None, grpc_port: int = 6334) -> api.Connection:
    """Server-only settings go in `options`, which reach ServerStore and are unused by the embedded store."""
    options = ServerOptions(prefer_grpc=prefer_grpc, grpc_port=grpc_port,
                            **({} if timeout is None else {"timeout": timeout}))
    return api.Connection(home=home, url=url, api_key=api_key, options=options)


def collection_options(on_disk: bool, quantization: str, shards: int | None, replicas: int | None,
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


def train_config(members: int, preset: str, epochs: int | None, batch_size: int | None, seed: int, clusters: str,
            diversity: str, model: str | None, pretrained: str | None, parallel: int | None = None,
            precision: str = "auto", text_encoder: str | None = None, field_cols: str | None = None,
            towers: str | None = None, device: str = "auto") -> TrainConfig:
    """The training flags as a checked TrainConfig (importing it loads torch: only commands that train call this)."""
    from enclip_qdrant import TrainConfig

    if diversity not in ("seed", "bootstrap"):
        raise EnclipError(f"--diversity must be 'seed' or 'bootstrap', not {diversity!r}")
    if clusters != "auto" and not clusters.isdigit():
        raise EnclipError(f"--clusters must be a number or 'auto', not {clusters!r}")
    return TrainConfig(members=members, preset=preset, epochs=epochs, batch_size=batch_size, seed=seed,
                       clusters=None if clusters == "auto" else int(clusters), diversity=diversity,  # type: ignore[arg-type]
                       base_model=model, pretrained=pretrained, parallel=parallel,
                       precision=precision, text_encoder=text_encoder,  # type: ignore[arg-type]
                       field_cols=field_cols, towers=towers, device=device)
