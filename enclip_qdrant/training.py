"""Train an ENCLIP ensemble: N open_clip members, then clusters and routers; resumable per member.

Members are independent, so on a multi-core CPU they train side by side in worker processes
(`parallel`), splitting the cores between them: small models use one core each far better than two
cores use one model. On CPUs with native bfloat16 (AVX512-BF16, AMX) the forward and backward passes run
under bf16 autocast, about 1.4x faster here; the loss and the weights stay float32.

Diversity comes from each member's seed (initialisation, data order, augmentation) and, with
`diversity="bootstrap"`, from a bootstrap resample of the training split. Seed-only is the default:
with a small catalog every member needs all the data it can get, and deep-ensemble results show
independent initialisations already give most of the diversity.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .bundle import CLUSTERS, FORMAT, MANIFEST, PLAN, Bundle, build_manifest, load_bundle, save_clusters, write_manifest
from .clustering import fit_clusters
from .errors import BundleError, CatalogError
from .fields import field_texts, parse_field_cols, resolve_field_cols
from .files import atomic_write_json, locked, read_json
from .labels import cluster_labels
from .member_job import (  # noqa: F401 - Pairs, decode_image, train_member... are this module's API too
    REPORT,
    MemberJob,
    Pairs,
    ResolvedConfig,
    decode_image,
    evaluate_member,
    log_member,
    read_report,
    retrieval_recall,
    train_and_save,
    train_member,
)
from .members import Ensemble, Member, joint_embedding, load_member
from .presets import FINETUNE_LR, TOWER_MODES, get_preset, member_tower
from .progress import NullProgress, Progress
from .text_encoders import TEXT_ENCODERS

MIN_PAIRS = 16
# A second run training into the same folder gets a clear "busy" error at once rather than waiting for a
# training that can take an hour; it is never allowed to write beside the first.
TRAIN_LOCK_TIMEOUT = 2.0


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    members: int = 5
    preset: str = "small"
    epochs: int | None = None  # None: the preset's
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    diversity: Literal["seed", "bootstrap"] = "seed"
    val_fraction: float = 0.05
    clusters: int | None = None  # None: auto
    base_model: str | None = None  # an open_clip model name, for fine-tuning
    pretrained: str | None = None  # tag, hf-hub:ID or a local .safetensors / local-dir folder
    warmup_fraction: float = 0.1
    threads: int | None = None  # CPU threads for the whole run; None: every core this process may use
    parallel: int | None = None  # members trained at once; None: one per core (at most 4)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where the CPU computes it natively
    text_encoder: str | None = None  # "minilm": shared frozen pretrained text tower (recipes.py); None: the preset's
    onnx: bool = True  # export the towers to ONNX (torch-free queries); off only to save seconds in tests
    field_cols: str | None = None  # field-aware training: "auto", "none" or "a,b,c"; None: the preset's
    towers: str | None = None  # image towers: "same", "mixed", "resnet" (presets.member_tower); None: the preset's

    def __post_init__(self) -> None:  # fail before any catalog is read or member trained
        if self.precision not in PRECISIONS:
            raise BundleError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, "
                              f"not {self.precision!r}")
        if self.text_encoder is not None and self.text_encoder not in TEXT_ENCODERS:
            raise BundleError(f"--text-encoder must be one of {', '.join(TEXT_ENCODERS)}, not {self.text_encoder!r}")
        if self.text_encoder not in (None, "none") and (self.pretrained or self.base_model):
            raise BundleError("--text-encoder applies to members trained from a preset, not to --model/--pretrained")
        if self.parallel is not None and self.parallel < 1:
            raise BundleError(f"--parallel must be at least 1, not {self.parallel}")
        parse_field_cols(self.field_cols)
        if self.towers is not None and self.towers not in TOWER_MODES:
            raise BundleError(f"--towers must be {', '.join(TOWER_MODES[:-1])} or {TOWER_MODES[-1]}, "
                              f"not {self.towers!r}")
        if self.towers not in (None, "same") and (self.pretrained or self.base_model):
            raise BundleError(f"--towers {self.towers} applies to members trained from a preset, not to "
                              "--model/--pretrained")

    def resolved(self) -> ResolvedConfig:
        """The settings members really train with: the preset's defaults filled in, precision decided."""
        preset = get_preset(self.preset)
        finetune = self.pretrained is not None or self.base_model is not None
        return ResolvedConfig(**(asdict(self) | {
            "epochs": self.epochs or preset.epochs,
            "batch_size": self.batch_size or preset.batch_size,
            "lr": self.lr or (FINETUNE_LR if finetune else preset.lr),
            "weight_decay": preset.weight_decay,
            "precision": resolve_precision(self.precision),
            "text_encoder": "none" if finetune else (self.text_encoder or preset.text_encoder),
            "towers": "same" if finetune else (self.towers or preset.default_towers),
            "field_cols": parse_field_cols(self.field_cols) if self.field_cols is not None else preset.field_cols,
        }))

    def differs_from(self, trained: dict[str, Any]) -> list[str]:
        """Settings (of those that change what members learn) in which a trained bundle's config differs."""
        mine = self.resolved().to_dict()
        trained = _LEGACY | trained
        return [k for k in (*_PLAN_KEYS, "members", "clusters") if trained.get(k) != mine[k]]


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def native_bf16() -> bool:
    """True when the CPU has bfloat16 arithmetic; elsewhere bf16 autocast is emulated and slower than fp32."""
    try:  # torch exposes these probes only as private helpers of torch.cpu
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def resolve_precision(precision: str) -> str:
    """`auto` becomes what this CPU should use; TrainConfig has checked the name already."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


# The parts of the config that change what a member learns; `members` and `clusters` may change on resume.
_PLAN_KEYS = ("preset", "epochs", "batch_size", "lr", "seed", "diversity", "val_fraction", "base_model",
              "pretrained", "warmup_fraction", "weight_decay", "text_encoder", "field_cols", "towers")
# What a bundle or plan written before a setting existed was trained with (field_cols: titles only).
_LEGACY = {"field_cols": "none", "towers": "same"}


def load_pairs(products: Sequence[Any], progress: Progress, field_cols: Sequence[str] = ()) -> Pairs:
    task = progress.task("decoding images", total=len(products))
    images = []
    for p in products:
        images.append(decode_image(p.image))
        task.advance()
    task.close()
    return Pairs([p.id for p in products], images, [p.text for p in products], field_texts(products, field_cols))


def split_ids(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded validation split for model selection: 5% by default, at least 16 and at most 1000."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    n_val = min(max(n_val, 16), 1000, len(order) // 5)
    return order[n_val:], order[:n_val]


# What a training run writes in its folder: the only entries `--overwrite` ever removes.
_OURS = (PLAN, MANIFEST, CLUSTERS, "members", "text_features.safetensors")  # the last: recipes.TEXT_CACHE


def _is_tmp(name: str) -> bool:
    return name.endswith(".tmp")  # files.py's per-process temp files, and older fixed-name ones


def _valid_plan(plan: Any) -> bool:
    return isinstance(plan, dict) and isinstance(plan.get("catalog_fingerprint"), str) \
        and isinstance(plan.get("config"), dict) and isinstance(plan.get("train_ids"), list)


def _our_manifest(out: Path) -> bool:
    manifest = read_json(out / MANIFEST)
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _ownership(out: Path) -> str:
    """"empty", "run" (a readable plan of ours), "torn" (a plan that does not read back, in a folder holding
    nothing but our layout: a run of ours interrupted mid-write), "bundle" (our manifest, no plan), or
    "foreign": anything else, which is never deleted."""
    if not out.exists():
        return "empty"
    if not out.is_dir():
        return "foreign"
    entries = [e.name for e in out.iterdir()]
    if not entries:
        return "empty"
    plan_file = out / PLAN
    plan = read_json(plan_file) if plan_file.is_file() else None
    if _valid_plan(plan):
        return "run"
    only_our_layout = all(n in _OURS or _is_tmp(n) for n in entries)
    if plan_file.is_file() and plan is None and only_our_layout:  # JSON of another shape is not our plan
        return "torn"
    if _our_manifest(out) and only_our_layout:
        return "bundle"
    return "foreign"


def _refuse_protected(out: Path, protected: Sequence[tuple[str, Path]]) -> None:
    """--out may never be (or contain) the catalog or the workspace: training writes there and
    --overwrite deletes there."""
    real = out.resolve()
    for what, path in protected:
        p = Path(path).resolve()
        if real == p or p.is_relative_to(real):
            raise BundleError(f"--out {out} is {'the' if real == p else 'a folder holding the'} {what}: "
                              "choose another --out for the bundle")


def _remove_ours(out: Path) -> None:
    """Delete a previous run's files: only the entries a training run writes, never the folder's other files."""
    for entry in out.iterdir():
        if entry.name in _OURS or _is_tmp(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _prepare(out: Path, fingerprint: str, wanted: dict[str, Any], overwrite: bool, progress: Progress) -> None:
    """Resume a matching run, restart one of ours with --overwrite, or refuse; foreign folders are never touched."""
    state = _ownership(out)
    if state == "foreign":
        raise BundleError(f"{out} exists and is not an enclip bundle or training run (it holds other files); "
                          "pick another --out: enclip only deletes folders it made")
    if state == "run" and not overwrite:
        plan = read_json(out / PLAN)
        if plan["catalog_fingerprint"] != fingerprint or _LEGACY | plan["config"] != wanted:
            raise BundleError(f"{out} holds a training run with another catalog or settings; "
                              "pass --overwrite to replace it or choose another --out")
        progress.log(f"resuming the training run in {out}")
        return
    if state == "torn" and not overwrite:
        raise BundleError(f"{out} holds an interrupted training run whose plan ({PLAN}) is unreadable; "
                          "pass --overwrite to restart it cleanly or choose another --out")
    if state == "bundle" and not overwrite:
        raise BundleError(f"{out} holds an enclip bundle without its training plan; "
                          "pass --overwrite to replace it or choose another --out")
    if state != "empty":
        progress.log(f"replacing the previous training run in {out}")
        _remove_ours(out)


def train(catalog: Any, out: str | Path, config: TrainConfig | None = None,
          progress: Progress | None = None, overwrite: bool = False,
          protected: Sequence[tuple[str, Path]] = ()) -> Bundle:
    """Train (or resume) an ensemble on a catalog's image/caption pairs and write a bundle to `out`.

    The whole run holds a lock on `out`: a second run into the same folder gets a clear "busy" error.
    `protected`: (what, folder) pairs `out` must not be or contain, besides the catalog (the workspace home)."""
    config = config or TrainConfig()
    progress = progress or NullProgress()
    if config.members < 1:
        raise BundleError("--members must be at least 1")
    out = Path(out)
    cfg = config.resolved()
    products = [p for p in catalog.products if p.text]
    if len(products) < MIN_PAIRS:
        raise CatalogError(f"training needs captions: {len(products)} products have text "
                           f"(at least {MIN_PAIRS} needed; set the text column with --text-col)")
    _refuse_protected(out, [("catalog folder", Path(catalog.root)), *protected])
    field_cols = resolve_field_cols(cfg.field_cols, products)  # an unknown column fails before any work
    fingerprint = catalog.fingerprint()
    wanted = {k: getattr(cfg, k) for k in _PLAN_KEYS}
    with locked(out, timeout=TRAIN_LOCK_TIMEOUT, what=f"the bundle folder {out}"):
        _prepare(out, fingerprint, wanted, overwrite, progress)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # the bundle is incomplete until the end
        train_ids, val_ids = split_ids([p.id for p in products], cfg.val_fraction, cfg.seed)
        atomic_write_json(out / PLAN, {"catalog_fingerprint": fingerprint, "config": wanted,
                                       "train_ids": train_ids, "val_ids": val_ids}, indent=1)
        return _train_members(out, catalog, fingerprint, products, train_ids, val_ids, config.members, cfg,
                              field_cols, progress)


def _train_members(out: Path, catalog: Any, fingerprint: str, products: Sequence[Any], train_ids: list[str],
                   val_ids: list[str], n_members: int, cfg: ResolvedConfig, field_cols: Sequence[str],
                   progress: Progress) -> Bundle:
    if field_cols:
        progress.log(f"field-aware training on {', '.join(field_cols)} (--field-cols none: titles only)")
    pairs = load_pairs(products, progress, field_cols)
    train_idx = np.array([pairs.index[i] for i in train_ids])
    val_idx = np.array([pairs.index[i] for i in val_ids])
    if cfg.text_encoder != "none":  # frozen shared encoder: every caption encoded once per run
        from .recipes import prepare_text_cache

        texts = pairs.encoder_texts()
        progress.log(f"encoding {len(set(texts))} distinct texts with the shared {cfg.text_encoder} text encoder")
        prepare_text_cache(out, texts, cfg.text_encoder)

    jobs: list[MemberJob] = []
    finetune = cfg.base_model is not None or cfg.pretrained is not None
    for i in range(n_members):
        name, seed = f"m{i}", cfg.seed * 1000 + i
        idx = train_idx
        if cfg.diversity == "bootstrap":
            idx = np.random.default_rng(seed).choice(train_idx, size=len(train_idx), replace=True)
        tower = "" if finetune else member_tower(get_preset(cfg.preset), cfg.towers, i)
        jobs.append(MemberJob(name, f"{name} ({i + 1}/{n_members})", seed, out / "members" / name, idx, tower))
    todo = [j for j in jobs if read_report(j.folder) is None]  # missing, torn or stale: train it (again)
    for j in jobs:
        if j not in todo:
            progress.log(f"member {j.name}: already trained, kept")
    budget = cfg.threads or available_cores()
    workers = min(len(todo), cfg.parallel or _auto_workers(budget, len(train_idx) * cfg.epochs))
    if workers > 1:
        progress.log(f"training {len(todo)} members, {workers} at a time on {budget} threads ({cfg.precision})")
        from .parallel import train_members_parallel

        train_members_parallel(todo, products, val_idx, cfg, workers, budget, progress, pairs.field_texts)
    else:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        for job in todo:
            log_member(progress, job.name, train_and_save(job, pairs, val_idx, cfg, progress))
    members = [load_member(j.folder, j.name) for j in jobs]
    reports = [read_report(j.folder) for j in jobs]
    if any(r is None for r in reports):
        raise BundleError(f"a member's report in {out / 'members'} did not read back after training; run again")
    return _finish(out, catalog, fingerprint, pairs, products, train_idx, val_idx, members,
                   [r for r in reports if r is not None], cfg, field_cols, progress)


# A worker process costs ~5 s to start (importing torch and open_clip); below this much training per
# member, one process training members one after another finishes first.
PARALLEL_MIN_PAIRS = 10_000


def _auto_workers(budget: int, pairs_per_member: int) -> int:
    """One member per core, at most 4 at once (each holds its own model, optimiser and activations)."""
    return 1 if pairs_per_member < PARALLEL_MIN_PAIRS else min(budget, 4)


def _export_onnx(out: Path, members: list[Member], fingerprint: str, progress: Progress) -> dict[str, Any] | None:
    """ONNX towers for the torch-free query path; a member that cannot be exported, or whose export differs from
    torch (refused), leaves the bundle on torch (said in one line), never fails the training run."""
    from .onnx_export import UnsupportedExport, export_members

    try:
        return export_members(out, members, fingerprint, progress)
    except (UnsupportedExport, BundleError, ImportError) as e:
        progress.log(f"ONNX export skipped ({e}); this bundle's queries run on torch")
        return None


def _finish(out: Path, catalog: Any, fingerprint: str, pairs: Pairs, products: Sequence[Any], train_idx: np.ndarray,
            val_idx: np.ndarray, members: list[Member], reports: list[dict[str, Any]], cfg: ResolvedConfig,
            field_cols: Sequence[str], progress: Progress) -> Bundle:
    """Cluster the catalog in the ensemble's joint space, fit the routers, write clusters + manifest."""
    ensemble = Ensemble(members)
    task = progress.task("embedding the catalog for clustering", total=2)
    img = ensemble.encode_images(pairs.images)
    task.advance()
    txt = ensemble.encode_texts(pairs.texts)
    task.advance()
    task.close()
    img_joint, txt_joint = joint_embedding(img), joint_embedding(txt)
    clusters, labels = fit_clusters(img_joint[train_idx], txt_joint[train_idx], cfg.clusters, cfg.seed)
    # the routers were fitted on the training pairs; the validation pairs calibrate their confidence
    clusters = clusters.calibrated(txt_joint[val_idx], img_joint[val_idx])
    val_labels = clusters.assign(img_joint[val_idx])
    router_acc = float((clusters.text_router.probs(txt_joint[val_idx]).argmax(1) == val_labels).mean())
    ens_val = retrieval_recall(img_joint[val_idx], txt_joint[val_idx], [pairs.texts[i] for i in val_idx])
    save_clusters(out / CLUSTERS, clusters)
    assignment = clusters.assign(img_joint)
    sizes = np.bincount(assignment, minlength=clusters.k)
    labels = cluster_labels([p.text for p in products], [p.fields for p in products], assignment, clusters.k)
    manifest = build_manifest(
        out, members=members, reports=reports, clusters=clusters, sizes=sizes.tolist(), router_accuracy=router_acc,
        training={"catalog_fingerprint": fingerprint, "catalog": str(catalog.root), "pairs": len(products),
                  "train": len(train_idx), "val": len(val_idx), "field_cols": list(field_cols)},
        config=cfg.to_dict(), validation={"ensemble": ens_val}, labels=labels)
    onnx = _export_onnx(out, members, manifest["fingerprint"], progress) if cfg.onnx else None
    if onnx is not None:
        manifest["onnx"] = onnx
    write_manifest(out, manifest)
    progress.log(f"ensemble val R@10 {ens_val['r@10']:.3f} (best member "
                 f"{max(r['val']['r@10'] for r in reports):.3f}); {clusters.k} clusters, "
                 f"router accuracy {router_acc:.2f}")
    return load_bundle(out, verify=False)
