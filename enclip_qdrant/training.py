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

import copy
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import open_clip
import torch
from PIL import Image

from .augment import train_transform
from .bundle import (
    CLUSTERS,
    FORMAT,
    FORMAT_VERSION,
    Bundle,
    bundle_fingerprint,
    load_bundle,
    save_clusters,
    write_manifest,
)
from .clustering import fit_clusters
from .errors import BundleError, CatalogError
from .images import load_image
from .members import Ensemble, Member, file_sha256, joint_embedding, load_member, new_member
from .presets import FINETUNE_LR, get_preset
from .progress import NullProgress, Progress

PLAN = "training.json"
MIN_PAIRS = 16


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

    def __post_init__(self) -> None:  # fail before any catalog is read or member trained
        if self.precision not in PRECISIONS:
            raise BundleError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, "
                              f"not {self.precision!r}")
        if self.parallel is not None and self.parallel < 1:
            raise BundleError(f"--parallel must be at least 1, not {self.parallel}")

    def resolved(self) -> dict[str, Any]:
        preset = get_preset(self.preset)
        finetune = self.pretrained is not None or self.base_model is not None
        d = asdict(self)
        d["epochs"] = self.epochs or preset.epochs
        d["batch_size"] = self.batch_size or preset.batch_size
        d["lr"] = self.lr or (FINETUNE_LR if finetune else preset.lr)
        d["weight_decay"] = preset.weight_decay
        d["precision"] = resolve_precision(self.precision)
        return d

    def differs_from(self, trained: dict[str, Any]) -> list[str]:
        """Settings (of those that change what members learn) in which a trained bundle's config differs."""
        mine = self.resolved()
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
              "pretrained", "warmup_fraction", "weight_decay")


@dataclass
class Pairs:
    """Decoded images and their captions, held in memory once for all members."""

    ids: list[str]
    images: list[Image.Image]
    texts: list[str]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {pid: i for i, pid in enumerate(self.ids)}


def decode_image(path: str | Path) -> Image.Image:
    return load_image(path)  # bounded (draft + thumbnail to 512 px): 64 12-MP photos no longer take 7 GB


def load_pairs(products: Sequence[Any], progress: Progress) -> Pairs:
    task = progress.task("decoding images", total=len(products))
    images = []
    for p in products:
        images.append(decode_image(p.image))
        task.advance()
    task.close()
    return Pairs([p.id for p in products], images, [p.text for p in products])


def split_ids(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded validation split for model selection: 5% by default, at least 16 and at most 1000."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    n_val = min(max(n_val, 16), 1000, len(order) // 5)
    return order[n_val:], order[:n_val]


def retrieval_recall(img: np.ndarray, txt: np.ndarray, texts: Sequence[str], ks=(1, 5, 10)) -> dict[str, float]:
    """Text->image recall@k on a held-out set; an image counts as relevant when its caption is the query's."""
    sims = txt @ img.T
    order = np.argsort(-sims, axis=1)
    labels = np.asarray(texts)
    relevant = labels[order] == labels[:, None]
    out = {f"r@{k}": float(relevant[:, :k].any(axis=1).mean()) for k in ks}
    first = np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, np.inf)
    out["mrr"] = float(np.mean(1.0 / first))
    return out


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * progress))


def train_member(member: Member, pairs: Pairs, train_idx: np.ndarray, val_idx: np.ndarray,
                 cfg: dict[str, Any], seed: int, progress: Progress, label: str,
                 threads: Callable[[], int] | None = None) -> dict[str, Any]:
    """Contrastive training (open_clip's ClipLoss, AdamW, warm-up + cosine); keeps the best epoch on val.

    `threads`, when given, is asked before every step how many CPU threads to use: a member training
    beside others gets its share of the cores, and all of them once the others have finished.
    """
    torch.manual_seed(seed)
    bf16 = cfg.get("precision") == "bf16"
    rng = np.random.default_rng(seed)
    model = member.model
    tf = train_transform(member.preprocess_cfg, seed)
    tokens = member.tokenizer(pairs.texts)
    bs = min(cfg["batch_size"], len(train_idx))
    steps_per_epoch = max(1, len(train_idx) // bs)
    total = steps_per_epoch * cfg["epochs"]
    warmup = max(1, int(total * cfg["warmup_fraction"]))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    task = progress.task(f"{label} training", total=total)
    best: dict[str, Any] = {"score": -1.0}
    history = []
    step, t0 = 0, time.perf_counter()
    for epoch in range(cfg["epochs"]):
        model.train()
        order = rng.permutation(train_idx)
        losses = []
        for b in range(steps_per_epoch):
            wanted = threads() if threads is not None else None
            if wanted is not None and wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)
            batch = order[b * bs:(b + 1) * bs]
            images = torch.stack([tf(pairs.images[i]) for i in batch])
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, cfg["lr"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                img_f, txt_f, scale = model(images, tokens[batch])[:3]
            loss = loss_fn(img_f.float(), txt_f.float(), scale.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # CLIP's clamp: a logit scale above 100 destabilises training
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
            task.advance(loss=f"{np.mean(losses[-20:]):.3f}")
        metrics = evaluate_member(member, pairs, val_idx)
        metrics |= {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        history.append(metrics)
        task.update(val=f"R@10 {metrics['r@10']:.3f}")
        score = metrics["r@10"] + metrics["mrr"]
        if score > best["score"]:
            best = {"score": score, "state": copy.deepcopy(model.state_dict()), "metrics": metrics}
    task.close()
    model.load_state_dict(best["state"])
    model.eval()
    elapsed = time.perf_counter() - t0
    return {"val": best["metrics"], "history": history, "seconds": round(elapsed, 1),
            "pairs_per_second": round(total * bs / elapsed, 1), "precision": cfg.get("precision", "fp32")}


def evaluate_member(member: Member, pairs: Pairs, val_idx: np.ndarray) -> dict[str, float]:
    ens = Ensemble([member])
    img = ens.encode_images([pairs.images[i] for i in val_idx])[member.name]
    txt = ens.encode_texts([pairs.texts[i] for i in val_idx])[member.name]
    return retrieval_recall(img, txt, [pairs.texts[i] for i in val_idx])


def _read_plan(out: Path) -> dict[str, Any] | None:
    p = out / PLAN
    return json.loads(p.read_text()) if p.is_file() else None


def train(catalog: Any, out: str | Path, config: TrainConfig | None = None,
          progress: Progress | None = None, overwrite: bool = False) -> Bundle:
    """Train (or resume) an ensemble on a catalog's image/caption pairs and write a bundle to `out`."""
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
    fingerprint = catalog.fingerprint()
    plan = _read_plan(out)
    wanted = {k: cfg[k] for k in _PLAN_KEYS}
    if plan is not None and not overwrite:
        if plan["catalog_fingerprint"] != fingerprint or plan["config"] != wanted:
            raise BundleError(f"{out} holds a training run with another catalog or settings; "
                              "pass --overwrite to replace it or choose another --out")
        progress.log(f"resuming the training run in {out}")
    elif out.exists() and any(out.iterdir()):
        if not overwrite and plan is None:
            raise BundleError(f"{out} exists and is not an enclip training run; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # the bundle is incomplete until the end

    train_ids, val_ids = split_ids([p.id for p in products], cfg["val_fraction"], cfg["seed"])
    (out / PLAN).write_text(json.dumps({"catalog_fingerprint": fingerprint, "config": wanted,
                                        "train_ids": train_ids, "val_ids": val_ids}, indent=1))
    pairs = load_pairs(products, progress)
    train_idx = np.array([pairs.index[i] for i in train_ids])
    val_idx = np.array([pairs.index[i] for i in val_ids])

    jobs: list[MemberJob] = []
    for i in range(config.members):
        name, seed = f"m{i}", cfg["seed"] * 1000 + i
        idx = train_idx
        if cfg["diversity"] == "bootstrap":
            idx = np.random.default_rng(seed).choice(train_idx, size=len(train_idx), replace=True)
        jobs.append(MemberJob(name, f"{name} ({i + 1}/{config.members})", seed, out / "members" / name, idx))
    todo = [j for j in jobs if not (j.folder / REPORT).is_file()]
    for j in jobs:
        if j not in todo:
            progress.log(f"member {j.name}: already trained, kept")
    budget = cfg["threads"] or available_cores()
    workers = min(len(todo), cfg["parallel"] or _auto_workers(budget, len(train_idx) * cfg["epochs"]))
    if workers > 1:
        progress.log(f"training {len(todo)} members, {workers} at a time on {budget} threads ({cfg['precision']})")
        from .parallel import train_members_parallel

        train_members_parallel(todo, products, val_idx, cfg, workers, budget, progress)
    else:
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        for job in todo:
            _log_member(progress, job.name, _train_and_save(job, pairs, val_idx, cfg, progress))
    members = [load_member(j.folder, j.name) for j in jobs]
    reports = [json.loads((j.folder / REPORT).read_text()) for j in jobs]

    return _finish(out, catalog, fingerprint, pairs, products, train_idx, val_idx, members, reports, cfg, progress)


# A worker process costs ~5 s to start (importing torch and open_clip); below this much training per
# member, one process training members one after another finishes first.
PARALLEL_MIN_PAIRS = 10_000


def _auto_workers(budget: int, pairs_per_member: int) -> int:
    """One member per core, at most 4 at once (each holds its own model, optimiser and activations)."""
    return 1 if pairs_per_member < PARALLEL_MIN_PAIRS else min(budget, 4)


REPORT = "report.json"  # written last in a member's folder: the member is complete


@dataclass(frozen=True, eq=False)
class MemberJob:
    name: str
    label: str
    seed: int
    folder: Path
    idx: np.ndarray  # training pairs (a bootstrap resample under diversity="bootstrap")


def _train_and_save(job: MemberJob, pairs: Pairs, val_idx: np.ndarray, cfg: dict[str, Any], progress: Progress,
                    threads: Callable[[], int] | None = None) -> dict[str, Any]:
    started = time.time()
    member = new_member(job.name, get_preset(cfg["preset"]), seed=job.seed, base_model=cfg["base_model"],
                        pretrained=cfg["pretrained"])
    report = train_member(member, pairs, job.idx, val_idx, cfg, job.seed, progress, job.label, threads)
    report["started"], report["finished"] = round(started, 2), round(time.time(), 2)  # wall clock, for overlap
    report["peak_rss_mib"] = _peak_rss_mib()  # of the process that trained it: a worker, or the caller's
    member.info["val"] = report["val"]
    report["sha256"] = member.save(job.folder)
    (job.folder / REPORT).write_text(json.dumps(report, indent=1))
    return report


def _peak_rss_mib() -> int | None:
    try:
        import resource
    except ImportError:  # not Unix
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _log_member(progress: Progress, name: str, report: dict[str, Any]) -> None:
    progress.log(f"member {name}: val R@10 {report['val']['r@10']:.3f}, MRR {report['val']['mrr']:.3f}, "
                 f"{report['pairs_per_second']} pairs/s")


def _finish(out: Path, catalog: Any, fingerprint: str, pairs: Pairs, products: Sequence[Any], train_idx: np.ndarray,
            val_idx: np.ndarray, members: list[Member], reports: list[dict[str, Any]], cfg: dict[str, Any],
            progress: Progress) -> Bundle:
    """Cluster the catalog in the ensemble's joint space, fit the routers, write clusters + manifest."""
    ensemble = Ensemble(members)
    task = progress.task("embedding the catalog for clustering", total=2)
    img = ensemble.encode_images(pairs.images)
    task.advance()
    txt = ensemble.encode_texts(pairs.texts)
    task.advance()
    task.close()
    img_joint, txt_joint = joint_embedding(img), joint_embedding(txt)
    clusters, labels = fit_clusters(img_joint[train_idx], txt_joint[train_idx], cfg["clusters"], cfg["seed"])
    # the routers were fitted on the training pairs; the validation pairs calibrate their confidence
    clusters = clusters.calibrated(txt_joint[val_idx], img_joint[val_idx])
    val_labels = clusters.assign(img_joint[val_idx])
    router_acc = float((clusters.text_router.probs(txt_joint[val_idx]).argmax(1) == val_labels).mean())
    ens_val = retrieval_recall(img_joint[val_idx], txt_joint[val_idx], [pairs.texts[i] for i in val_idx])
    save_clusters(out / CLUSTERS, clusters)
    sizes = np.bincount(clusters.assign(img_joint), minlength=clusters.k)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "preset": cfg["preset"] if cfg["pretrained"] is None and cfg["base_model"] is None else None,
        "members": [
            {"name": m.name, "vector": m.name, "dim": m.dim, "path": f"members/{m.name}",
             "sha256": r["sha256"], "seed": m.info.get("seed"), "preset": m.info.get("preset"),
             "base_model": m.info.get("base_model"), "pretrained": m.info.get("pretrained"),
             "val": r["val"], "train_seconds": r["seconds"], "pairs_per_second": r["pairs_per_second"]}
            for m, r in zip(members, reports, strict=True)
        ],
        "clusters": {"k": clusters.k, "criterion": clusters.criterion, "sizes": sizes.tolist(),
                     "router_val_accuracy": router_acc,
                     "router_temperature": {"text": clusters.text_router.temperature,
                                            "image": clusters.image_router.temperature}},
        "training": {"catalog_fingerprint": fingerprint, "catalog": str(catalog.root),
                     "pairs": len(products), "train": len(train_idx), "val": len(val_idx),
                     "config": {k: cfg[k] for k in sorted(cfg)}},
        "validation": {"ensemble": ens_val},
    }
    manifest["fingerprint"] = bundle_fingerprint([r["sha256"] for r in reports],
                                                 file_sha256(out / CLUSTERS))
    write_manifest(out, manifest)
    progress.log(f"ensemble val R@10 {ens_val['r@10']:.3f} (best member "
                 f"{max(r['val']['r@10'] for r in reports):.3f}); {clusters.k} clusters, "
                 f"router accuracy {router_acc:.2f}")
    return load_bundle(out, verify=False)
