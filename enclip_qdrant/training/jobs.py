"""One member's training job, shared by the in-process path (`training`) and worker processes (`parallel`).

It lives apart from both so neither imports the other for it: `training` plans the run and may start
workers; `parallel` runs workers; both train a member the same way, through `train_and_save` here.

A member is done when its `report.json` (written last, atomically) reads back whole and names the sha256
of the weights beside it: a torn or missing report, or weights that changed, mean "train it again".
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from enclip_qdrant.bundle.names import WEIGHTS_NAME
from enclip_qdrant.engine.torch.device import autocast, grad_scaler, resolve_device
from enclip_qdrant.engine.torch.members import Ensemble, Member
from enclip_qdrant.files import atomic_write_json, file_sha256, read_json
from enclip_qdrant.progress import Progress
from enclip_qdrant.training.augment import train_transform
from enclip_qdrant.training.config import ResolvedConfig
from enclip_qdrant.training.image_cache import ImageCache
from enclip_qdrant.training.loader import member_loader
from enclip_qdrant.training.loss import TITLE_SHARE, MultiPositiveClipLoss, batch_positives
from enclip_qdrant.training.members import new_member
from enclip_qdrant.training.presets import get_preset, with_tower

REPORT = "report.json"  # written last in a member's folder: the member is complete
_REPORT_KEYS = {"val": dict, "sha256": str, "seconds": (int, float), "pairs_per_second": (int, float)}


@dataclass
class Pairs:
    """The products' cached images (on disk, memory-mapped: image_cache) and their captions, for all members."""

    ids: list[str]
    images: ImageCache
    texts: list[str]
    field_texts: list[tuple[str, ...]] = field(default_factory=list)  # per product; empty: titles only
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {pid: i for i, pid in enumerate(self.ids)}

    def encoder_texts(self) -> list[str]:
        """Every text a member is trained on (titles, then field texts), for the shared encoder's cache."""
        return self.texts + [t for ts in self.field_texts for t in ts]


@dataclass(frozen=True, eq=False)
class MemberJob:
    name: str
    label: str
    seed: int
    folder: Path
    idx: np.ndarray  # training pairs (a bootstrap resample under diversity="bootstrap")
    tower: str = ""  # the preset's image tower this member uses (presets.with_tower); "": the preset's own


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
                 cfg: ResolvedConfig, seed: int, progress: Progress, label: str,
                 threads: Callable[[], int] | None = None) -> dict[str, Any]:
    """Contrastive training (open_clip's ClipLoss, AdamW, warm-up + cosine); keeps the best epoch on val.

    With field texts (`pairs.field_texts`, field-aware training) each product of a batch also brings one of
    its field texts, drawn at random, and the loss is `MultiPositiveClipLoss` over titles + field texts.

    `threads`, when given, is asked before every step how many CPU threads to use: a member training
    beside others gets its share of the cores, and all of them once the others have finished.
    """
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = grad_scaler(device, dtype)
    rng = np.random.default_rng(seed)
    model = member.model.to(device)
    tokens = member.tokenizer(pairs.texts).to(device)
    bs = min(cfg.batch_size, len(train_idx))
    steps_per_epoch = max(1, len(train_idx) // bs)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    fields = FieldSampler(member, pairs, seed, device) if any(pairs.field_texts) else None
    cuda = device.type == "cuda"
    loader, batches = member_loader(pairs.images, train_transform(member.preprocess_cfg), bs, cfg.loader_workers,
                                    threads() if threads is not None else torch.get_num_threads(),
                                    pin_memory=cuda, cuda=cuda)
    augment = np.random.default_rng([seed, 2])  # one augmentation seed per sample (augment.TrainTransform)
    task = progress.task(f"{label} training", total=total)
    best: dict[str, Any] = {"score": -1.0}
    history = []
    step, t0 = 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(train_idx)
        batches.set_epoch(order[:steps_per_epoch * bs], augment.integers(0, 2**63 - 1, size=steps_per_epoch * bs))
        losses = []
        for b, images in enumerate(loader):
            wanted = threads() if threads is not None else None
            if wanted is not None and wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)
            batch = order[b * bs:(b + 1) * bs]
            images = images.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, warmup, cfg.lr)
            text_in, positives = (tokens[batch], None) if fields is None else fields.batch(batch, tokens)
            with autocast(device, dtype):
                img_f, txt_f, scale = model(images, text_in)[:3]
            if positives is None:
                loss = loss_fn(img_f.float(), txt_f.float(), scale.float())
            else:
                loss = fields.loss(img_f.float(), txt_f.float(), scale.float(), positives.to(device))
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:  # fp16: gradients scaled against underflow; a step with inf/nan gradients is skipped
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
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
    model.to("cpu").eval()  # saved, exported and reloaded from the CPU
    elapsed = time.perf_counter() - t0
    return {"val": best["metrics"], "history": history, "seconds": round(elapsed, 1),
            "pairs_per_second": round(total * bs / elapsed, 1), "precision": cfg.precision,
            "device": device.type, "loader_workers": loader.num_workers}


class FieldSampler:
    """Field-aware batches: each product's title plus one of its field texts (drawn from its own generator, so
    the data order and augmentation stay those of plain training with the same seed)."""

    def __init__(self, member: Member, pairs: Pairs, seed: int, device: torch.device | None = None):
        self.pairs = pairs
        self.vocab = sorted({t for ts in pairs.field_texts for t in ts})
        self.slot = {t: i for i, t in enumerate(self.vocab)}
        self.tokens = member.tokenizer(self.vocab).to(device or "cpu")
        self.rng = np.random.default_rng([seed, 1])
        self.loss = MultiPositiveClipLoss()

    def batch(self, batch: np.ndarray, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        own = [self.pairs.field_texts[i] for i in batch]
        drawn = list(dict.fromkeys(ts[self.rng.integers(len(ts))] for ts in own if ts))
        positives = batch_positives([self.pairs.texts[i] for i in batch], own, drawn, TITLE_SHARE)
        extra = self.tokens[[self.slot[t] for t in drawn]]
        return torch.cat([tokens[batch], extra]), positives


def evaluate_member(member: Member, pairs: Pairs, val_idx: np.ndarray) -> dict[str, float]:
    ens = Ensemble([member])
    img = ens.encode_images(pairs.images.subset(val_idx))[member.name]
    txt = ens.encode_texts([pairs.texts[i] for i in val_idx])[member.name]
    return retrieval_recall(img, txt, [pairs.texts[i] for i in val_idx])


def train_and_save(job: MemberJob, pairs: Pairs, val_idx: np.ndarray, cfg: ResolvedConfig, progress: Progress,
                   threads: Callable[[], int] | None = None) -> dict[str, Any]:
    """Train one member and write its folder; the report goes last, so a crash before it means "not done"."""
    started = time.time()
    (job.folder / REPORT).unlink(missing_ok=True)  # a stale report must not vouch for the new weights
    if cfg.text_encoder != "none":
        from enclip_qdrant.training.heads import new_head_member
        from enclip_qdrant.training.text_cache import load_text_cache

        load_text_cache(job.folder.parent.parent, pairs.encoder_texts(), cfg.text_encoder)  # <bundle>/members/<name>
        member: Member = new_head_member(job.name, with_tower(get_preset(cfg.preset), job.tower), cfg.text_encoder,
                                         seed=job.seed)
    else:
        member = new_member(job.name, with_tower(get_preset(cfg.preset), job.tower), seed=job.seed,
                            base_model=cfg.base_model, pretrained=cfg.pretrained)
    if job.tower:
        member.info["tower"] = job.tower  # recorded in the member's config, the manifest and `info`
    report = train_member(member, pairs, job.idx, val_idx, cfg, job.seed, progress, job.label, threads)
    report["started"], report["finished"] = round(started, 2), round(time.time(), 2)  # wall clock, for overlap
    report["peak_rss_mib"] = _peak_rss_mib()  # of the process that trained it: a worker, or the caller's
    member.info["val"] = report["val"]
    report["sha256"] = member.save(job.folder)
    atomic_write_json(job.folder / REPORT, report, indent=1)
    return report


def read_report(folder: Path) -> dict[str, Any] | None:
    """The member's report when the member is complete; None (train it again) when the report is missing,
    torn, malformed, or its weights are not the ones it was written for."""
    report = read_json(folder / REPORT)
    if not isinstance(report, dict) or not all(isinstance(report.get(k), t) for k, t in _REPORT_KEYS.items()):
        return None
    if not all(isinstance(report["val"].get(k), (int, float)) for k in ("r@10", "mrr")):
        return None
    weights = folder / WEIGHTS_NAME
    if not weights.is_file() or file_sha256(weights) != report["sha256"]:
        return None
    return report


def _peak_rss_mib() -> int | None:
    try:
        import resource
    except ImportError:  # not Unix
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def log_member(progress: Progress, name: str, report: dict[str, Any]) -> None:
    progress.log(f"member {name}: val R@10 {report['val']['r@10']:.3f}, MRR {report['val']['mrr']:.3f}, "
                 f"{report['pairs_per_second']} pairs/s")
