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

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enclip_qdrant.bundle.clusters import save_clusters
from enclip_qdrant.bundle.manifest import Bundle, build_manifest, sealed_fingerprint, write_manifest
from enclip_qdrant.bundle.names import CLUSTERS, MANIFEST, PLAN
from enclip_qdrant.bundle.vectors import joint_embedding
from enclip_qdrant.catalog.fields import field_texts, resolve_field_cols
from enclip_qdrant.catalog.images import bound_for
from enclip_qdrant.engine.load import load_bundle
from enclip_qdrant.engine.torch.load import load_member
from enclip_qdrant.engine.torch.members import Ensemble, Member
from enclip_qdrant.errors import BundleError, CatalogError
from enclip_qdrant.files import atomic_write_json, locked
from enclip_qdrant.progress import NullProgress, Progress
from enclip_qdrant.system import available_cores
from enclip_qdrant.training.clustering import fit_clusters
from enclip_qdrant.training.config import MIN_PAIRS, PLAN_KEYS, ResolvedConfig, TrainConfig
from enclip_qdrant.training.image_cache import build_cache, remove_cache
from enclip_qdrant.training.jobs import (
    MemberJob,
    Pairs,
    log_member,
    read_report,
    retrieval_recall,
    train_and_save,
)
from enclip_qdrant.training.labels import cluster_labels
from enclip_qdrant.training.output import TRAIN_LOCK_TIMEOUT, prepare_output, refuse_foreign, refuse_protected
from enclip_qdrant.training.presets import get_preset, member_tower, with_tower


def load_pairs(products: Sequence[Any], folder: Path, bound: int, progress: Progress,
               field_cols: Sequence[str] = ()) -> Pairs:
    """The products' pairs, their images decoded into (or found in) the image cache in `folder`."""
    images = build_cache(Path(folder), products, bound, progress)
    return Pairs([p.id for p in products], images, [p.text for p in products], field_texts(products, field_cols))


def _input_sizes(cfg: ResolvedConfig, n_members: int) -> list[Any]:
    """Every member's image input size, known before any member is built: the decode bound follows the largest."""
    if cfg.base_model is None and cfg.pretrained is None:
        preset = get_preset(cfg.preset)
        return [with_tower(preset, member_tower(preset, cfg.towers, i)).preprocess_cfg()["size"]
                for i in range(n_members)]
    from enclip_qdrant.engine.torch.members import load_pretrained

    return [load_pretrained(cfg.base_model or "ViT-B-32", cfg.pretrained)[2]["size"]]


def split_ids(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded validation split for model selection: 5% by default, at least 16 and at most 1000."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    n_val = min(max(n_val, 16), 1000, len(order) // 5)
    return order[n_val:], order[:n_val]


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
    refuse_protected(out, [("catalog folder", Path(catalog.root)), *protected])
    refuse_foreign(out)  # again under the lock below; here so that a refusal creates no lock file
    field_cols = resolve_field_cols(cfg.field_cols, products)  # an unknown column fails before any work
    fingerprint = catalog.fingerprint()
    wanted = {k: getattr(cfg, k) for k in PLAN_KEYS}
    with locked(out, timeout=TRAIN_LOCK_TIMEOUT, what=f"the bundle folder {out}"):
        prepare_output(out, fingerprint, wanted, overwrite, progress)
        done = None if overwrite else _already_trained(out, fingerprint, config)
        if done is not None:
            progress.log(f"{out} is already trained on this catalog with these settings: kept "
                         "(--overwrite trains it again)")
            return done
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # the bundle is incomplete until the end
        train_ids, val_ids = split_ids([p.id for p in products], cfg.val_fraction, cfg.seed)
        atomic_write_json(out / PLAN, {"catalog_fingerprint": fingerprint, "config": wanted,
                                       "train_ids": train_ids, "val_ids": val_ids}, indent=1)
        return _train_members(out, catalog, fingerprint, products, train_ids, val_ids, config.members, cfg,
                              field_cols, progress)


def _already_trained(out: Path, fingerprint: str, config: TrainConfig) -> Bundle | None:
    """The bundle a previous run finished with this catalog and these settings, verified; else None (retrain:
    a torn or tampered one too). A rerun of a finished `train` then costs a hash check, not an ONNX export."""
    if not (out / MANIFEST).is_file():
        return None
    try:
        bundle = load_bundle(out, device=config.device)
    except BundleError:
        return None
    manifest, trained = bundle.manifest, bundle.manifest["training"]
    if (trained.get("catalog_fingerprint") != fingerprint or config.differs_from(trained.get("config", {}))
            or (config.onnx and not manifest.get("onnx"))
            or any(read_report(out / m["path"]) is None for m in manifest["members"])):  # torn: that one retrains
        return None
    return bundle


def _train_members(out: Path, catalog: Any, fingerprint: str, products: Sequence[Any], train_ids: list[str],
                   val_ids: list[str], n_members: int, cfg: ResolvedConfig, field_cols: Sequence[str],
                   progress: Progress) -> Bundle:
    if field_cols:
        progress.log(f"field-aware training on {', '.join(field_cols)} (--field-cols none: titles only)")
    pairs = load_pairs(products, out, bound_for(_input_sizes(cfg, n_members)), progress, field_cols)
    train_idx = np.array([pairs.index[i] for i in train_ids])
    val_idx = np.array([pairs.index[i] for i in val_ids])
    if cfg.text_encoder != "none":  # frozen shared encoder: every caption encoded once per run
        from enclip_qdrant.training.text_cache import prepare_text_cache

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
        from enclip_qdrant.training.parallel import train_members_parallel

        train_members_parallel(todo, pairs, val_idx, cfg, workers, budget, progress)
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
    from enclip_qdrant.training.export import UnsupportedExport, export_members

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
    if onnx is not None:  # the towers become part of the bundle's identity
        manifest["onnx"] = onnx
        manifest["fingerprint"] = sealed_fingerprint(manifest["fingerprint"], onnx)
    write_manifest(out, manifest)
    remove_cache(out)  # after the manifest: a crash in between leaves a complete bundle and a stray cache of ours
    progress.log(f"ensemble val R@10 {ens_val['r@10']:.3f} (best member "
                 f"{max(r['val']['r@10'] for r in reports):.3f}); {clusters.k} clusters, "
                 f"router accuracy {router_acc:.2f}")
    return load_bundle(out, verify=False, device=cfg.device)
