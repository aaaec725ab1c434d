"""The trained ensemble on disk: a self-describing directory that loads without unpickling anything.

    bundle/
      manifest.json            format, members (config, vector name, dim, metrics), clusters, training
      members/<name>/          an open_clip local-dir folder per member (config + safetensors)
      clusters.safetensors     centroids and both routers as plain arrays
      training.json            the training plan, kept so an interrupted run resumes

The manifest is written last: a directory without one is a training run still in progress.

A bundle is verified, not believed: `load_bundle` recomputes the fingerprint from the files it covers
(each member's weights and config, the clusters file), keeps every path inside the bundle folder, and turns
any malformed or corrupt part into one `BundleError` line. Format 2 fingerprints cover the member configs
(architecture, tokenizer, preprocessing); format 1 bundles (weights + clusters only) still load. Format 3
seals the ONNX towers in: the fingerprint also covers the manifest's whole `onnx` section (each file's sha256,
tokenizer settings), so an edited tower with an edited hash is another bundle to every collection, whichever
engine loads it. Format 1 and 2 bundles load on torch; their ONNX towers are not covered, so the ONNX engine
refuses them until `enclip-qdrant export --force` seals them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
from PIL import Image

from enclip_qdrant.bundle.labels import check_labels
from enclip_qdrant.bundle.names import CLUSTERS, CONFIG_NAME, MANIFEST, PLAN, WEIGHTS_NAME
from enclip_qdrant.bundle.routers import ClusterModel
from enclip_qdrant.bundle.vectors import joint_embedding
from enclip_qdrant.errors import BundleError
from enclip_qdrant.files import atomic_write_json, file_sha256, is_locked, read_json

FORMAT = "enclip-bundle"
FORMAT_VERSION = 3  # 2: the fingerprint also covers each member's open_clip_config.json; 3: and the ONNX section
SEALED_VERSION = 3  # from this format on the fingerprint covers the ONNX towers


class EnsembleEngine(Protocol):
    """What search and indexing need of the members: `members.Ensemble` (torch) or `onnx_runtime.OnnxEnsemble`."""

    @property
    def names(self) -> list[str]: ...

    @property
    def dims(self) -> dict[str, int]: ...

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = ...) -> dict[str, np.ndarray]: ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = ...) -> dict[str, np.ndarray]: ...


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    ensemble: EnsembleEngine
    clusters: ClusterModel

    @property
    def engine(self) -> str:
        """"onnx" or "torch": what encodes queries and images."""
        return getattr(self.ensemble, "engine", "torch")

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def vectors(self) -> dict[str, int]:
        return {m["vector"]: m["dim"] for m in self.manifest["members"]}

    def embed_images(self, images: list[Image.Image]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-member vectors and the joint embedding, for catalog items and image queries."""
        per = self.ensemble.encode_images(images)
        return per, joint_embedding(per)

    def embed_texts(self, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        per = self.ensemble.encode_texts(texts)
        return per, joint_embedding(per)


def bundle_fingerprint(member_hashes: Sequence[str], clusters_hash: str,
                       config_hashes: Sequence[str] | None = None) -> str:
    """Format 1: weights + clusters. Format 2 (`config_hashes` given): each member's weights and config."""
    h = hashlib.sha256()
    if config_hashes is None:
        parts = [*member_hashes, clusters_hash]
    else:
        parts = [f"{FORMAT}/2", *(w + c for w, c in zip(member_hashes, config_hashes, strict=True)), clusters_hash]
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:16]


def sealed_fingerprint(model_fingerprint: str, onnx: Mapping[str, Any] | None) -> str:
    """Format 3: the model's fingerprint (weights, configs, clusters) with the whole ONNX section, its file
    hashes and tokenizer settings included; without ONNX towers the model's fingerprint itself."""
    if not onnx:
        return model_fingerprint
    h = hashlib.sha256(f"{FORMAT}/3".encode())
    h.update(model_fingerprint.encode())
    h.update(json.dumps(onnx, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()[:16]


def model_fingerprint(path: Path, manifest: Mapping[str, Any]) -> str:
    """The format-2 fingerprint from the manifest's recorded hashes (trusted: call after verifying them)."""
    return bundle_fingerprint([m["sha256"] for m in manifest["members"]], file_sha256(Path(path) / CLUSTERS),
                              [m["config_sha256"] for m in manifest["members"]])


def sealed(manifest: Mapping[str, Any]) -> bool:
    """Whether the fingerprint covers the ONNX towers (format 3 on)."""
    return manifest.get("format_version", 0) >= SEALED_VERSION


def onnx_files(manifest: Mapping[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Every file record of the `onnx` section with what it is: member towers and tokenizers, the shared encoder."""
    record = manifest.get("onnx") or {}
    out = []
    for name, rec in (record.get("members") or {}).items():
        for part in ("image", "text", "tokenizer"):
            if part in rec:
                out.append((rec[part], f"member {name!r} {part}" + (" tower" if part != "tokenizer" else "")))
    shared = record.get("shared_text")
    if shared:
        out += [(shared["model"], "the shared text encoder"),
                (shared["tokenizer"], "the shared text encoder's tokenizer")]
    return out


def build_manifest(path: Path, *, members: Sequence[Any], reports: Sequence[Mapping[str, Any]],
                   clusters: ClusterModel, sizes: Sequence[int], router_accuracy: float,
                   training: Mapping[str, Any], config: Mapping[str, Any],
                   validation: Mapping[str, Any], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """The manifest of a bundle whose member folders and clusters file are already written in `path`;
    `labels`: a short readable name per cluster (labels.cluster_labels), or None."""
    entries = []
    for m, r in zip(members, reports, strict=True):
        folder = path / "members" / m.name
        entries.append({
            "name": m.name, "vector": m.name, "dim": m.dim, "path": f"members/{m.name}",
            "sha256": r["sha256"], "config_sha256": file_sha256(folder / CONFIG_NAME),
            "seed": m.info.get("seed"), "preset": m.info.get("preset"), "tower": m.info.get("tower"),
            "base_model": m.info.get("base_model"), "pretrained": m.info.get("pretrained"),
            "recipe": m.info.get("recipe", "open_clip"),
            "val": r["val"], "train_seconds": r["seconds"], "pairs_per_second": r["pairs_per_second"]})
    from_preset = config.get("pretrained") is None and config.get("base_model") is None
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "preset": config.get("preset") if from_preset else None,
        "members": entries,
        # the shared pretrained text encoder the members need (recipes.py), or None for open_clip text towers
        "text_encoder": next((m.model_cfg["text_encoder"] for m in members if "text_encoder" in m.model_cfg), None),
        "clusters": {"k": clusters.k, "criterion": clusters.criterion, "sizes": list(sizes),
                     "router_val_accuracy": router_accuracy,
                     "router_temperature": {"text": clusters.text_router.temperature,
                                            "image": clusters.image_router.temperature}}
        | ({"labels": list(labels)} if labels is not None else {}),
        "training": dict(training) | {"config": {k: config[k] for k in sorted(config)}},
        "validation": dict(validation),
    }
    manifest["fingerprint"] = bundle_fingerprint([e["sha256"] for e in entries], file_sha256(path / CLUSTERS),
                                                 [e["config_sha256"] for e in entries])
    return manifest


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(path) / MANIFEST, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, checked for every key and type the loader relies on: one clear line when it is not."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        run = (path / PLAN).is_file()
        if run and is_locked(path):  # a run's folder whose run still holds its lock
            raise BundleError(f"{path} is not an enclip bundle yet: `enclip-qdrant train` is writing it now; "
                              "wait for it to finish")
        hint = " (training did not finish: run `enclip-qdrant train` again to resume)" if run else ""
        raise BundleError(f"{path} is not an enclip bundle: no {MANIFEST}{hint}")
    manifest = read_json(mpath)
    if manifest is None:
        raise BundleError(f"{mpath} is corrupt (unreadable JSON); retrain the bundle or restore it")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not an enclip bundle manifest")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int):
        raise BundleError(f"{mpath} is malformed: format_version must be a number")
    if version > FORMAT_VERSION:
        raise BundleError(f"{path} was written by a newer enclip-qdrant (format {version}); upgrade to read it")
    _check_manifest(manifest, mpath)
    _check_onnx_section(manifest, mpath)
    return manifest


_MEMBER_KEYS: dict[str, type | tuple[type, ...]] = {"name": str, "vector": str, "dim": int, "path": str,
                                                    "sha256": str}
MAX_DIM = 65_536  # no CLIP tower is wider; a bigger "dim" is a corrupt or hostile manifest
MAX_CONTEXT = 4_096  # token positions: open_clip's towers use 77, sentence encoders at most 512
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_manifest(manifest: dict[str, Any], mpath: Path) -> None:
    def bad(what: str) -> BundleError:
        return BundleError(f"{mpath} is malformed: {what}")

    if not isinstance(manifest.get("fingerprint"), str):
        raise bad("no fingerprint")
    members = manifest.get("members")
    if not isinstance(members, list) or not members:
        raise bad("'members' must be a non-empty list")
    wanted = _MEMBER_KEYS | ({"config_sha256": str} if manifest.get("format_version", 0) >= 2 else {})
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise bad(f"member {i} is not an object")
        for key, kind in wanted.items():
            if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
                raise bad(f"member {i} needs '{key}' ({getattr(kind, '__name__', kind)})")
        if not 1 <= m["dim"] <= MAX_DIM:
            raise bad(f"member {i} 'dim' must be between 1 and {MAX_DIM}")
    vectors = [m["vector"] for m in members]
    if len(set(vectors)) != len(vectors):
        raise bad("two members share a vector name")
    clusters = manifest.get("clusters")
    if not isinstance(clusters, dict) or not isinstance(clusters.get("criterion"), str):
        raise bad("'clusters' needs a 'criterion'")
    if (wrong := check_labels(clusters)) is not None:
        raise bad(wrong)
    for key in ("training", "validation"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise bad(f"'{key}' must be an object")


def _check_onnx_section(manifest: dict[str, Any], mpath: Path) -> None:
    """The `onnx` section's schema: every value the ONNX engine reads has its type and a sane range."""
    record = manifest.get("onnx")
    if record is None:
        return

    def bad(what: str) -> BundleError:
        return BundleError(f"{mpath} is malformed: onnx {what}")

    def file(rec: Any, what: str) -> None:
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) \
                or not isinstance(rec.get("sha256"), str) or not _SHA256.fullmatch(rec["sha256"]):
            raise bad(f"{what} needs a 'path' and a 'sha256' (64 hex digits)")

    if not isinstance(record, dict) or not isinstance(record.get("members"), dict):
        raise bad("section must be an object with 'members'")
    for name, rec in record["members"].items():
        if not isinstance(rec, dict):
            raise bad(f"member {name!r} is not an object")
        file(rec.get("image"), f"member {name!r} image")
        file(rec.get("text"), f"member {name!r} text")
        if rec.get("text_input") not in ("tokens", "shared"):
            raise bad(f"member {name!r} 'text_input' must be \"tokens\" or \"shared\"")
        if not isinstance(rec.get("cut_at_eot", False), bool):
            raise bad(f"member {name!r} 'cut_at_eot' must be true or false")
        if rec["text_input"] == "tokens":
            tok = rec.get("tokenizer")
            file(tok, f"member {name!r} tokenizer")
            n = tok.get("context_length")
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CONTEXT:
                raise bad(f"member {name!r} tokenizer 'context_length' must be a whole number from 1 to "
                          f"{MAX_CONTEXT}")
    shared = record.get("shared_text")
    if shared is not None:
        if not isinstance(shared, dict) or not isinstance(shared.get("spec"), dict):
            raise bad("'shared_text' needs a 'spec'")
        file(shared.get("model"), "shared text model")
        file(shared.get("tokenizer"), "shared text tokenizer")
    if not isinstance(record.get("of_fingerprint"), str):
        raise bad("needs 'of_fingerprint'")


def inside(root: Path, rel: str, what: str) -> Path:
    """`root/rel`, refused unless it stays inside `root` (no absolute path, no `..`, no symlink out)."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or Path(rel).is_absolute() or ".." in pure.parts or "\\" in rel:
        raise BundleError(f"{what} path {rel!r} leaves the bundle folder: refused")
    full = root / rel
    real_root = root.resolve()
    if not full.resolve().is_relative_to(real_root):
        raise BundleError(f"{what} path {rel!r} leads outside the bundle folder (symlink?): refused")
    return full


def check_folder_inside(root: Path, folder: Path, what: str) -> None:
    """Every file of a member folder must really be in the bundle: a symlink to elsewhere is refused."""
    real_root = root.resolve()
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if not f.resolve().is_relative_to(real_root):
            raise BundleError(f"{what}: {f.name} leads outside the bundle folder (symlink?): refused")


def seen_product_ids(path: str | Path) -> set[str]:
    """Catalog ids a bundle trained or selected epochs on: an evaluation must not test on these."""
    plan = Path(path) / PLAN
    if not plan.is_file():
        raise BundleError(f"{path} records no training split ({PLAN}), so its test products cannot be checked")
    data = read_json(plan)
    ids = [data.get(k) for k in ("train_ids", "val_ids")] if isinstance(data, dict) else None
    if not ids or not all(isinstance(x, list) for x in ids):
        raise BundleError(f"{plan} is corrupt, so this bundle's test products cannot be checked; "
                          "retrain the bundle or pass another")
    return {str(i) for x in ids for i in x}


def verify_files(path: Path, manifest: dict[str, Any], folders: list[Path], cpath: Path, weights: bool = True,
                 onnx: bool = True) -> None:
    """Recompute the fingerprint. Without `weights` (the ONNX engine, which never reads them) the weights'
    recorded hashes stand in for theirs, and the engine checks the ONNX files against theirs as it reads them;
    with `onnx` the ONNX files are hashed here too (torch), so a changed tower is refused on both engines."""
    v2 = manifest.get("format_version", 0) >= 2
    hashes, configs = [], []
    for m, folder in zip(manifest["members"], folders, strict=True):
        for name in ((WEIGHTS_NAME,) if weights else ()) + (CONFIG_NAME,):
            if not (folder / name).is_file():
                raise BundleError(f"member {m['name']!r} is incomplete: {folder} needs {name}")
        hashes.append(file_sha256(folder / WEIGHTS_NAME) if weights else m["sha256"])
        if hashes[-1] != m["sha256"]:
            raise BundleError(f"member {m['name']} weights do not match the manifest (file changed?)")
        if v2:
            configs.append(file_sha256(folder / CONFIG_NAME))
            if configs[-1] != m["config_sha256"]:
                raise BundleError(f"member {m['name']} config ({CONFIG_NAME}) does not match the manifest "
                                  "(file changed?)")
    actual = bundle_fingerprint(hashes, file_sha256(cpath), configs if v2 else None)
    if sealed(manifest) and manifest.get("onnx"):
        if manifest["onnx"]["of_fingerprint"] != actual:
            raise BundleError(f"{path}: its ONNX towers were exported from another bundle "
                              f"({manifest['onnx']['of_fingerprint']}); run `enclip-qdrant export {path} --force`")
        if weights and onnx:
            for rec, what in onnx_files(manifest):
                f = inside(path, rec["path"], what)
                if not f.is_file() or file_sha256(f) != rec["sha256"]:
                    raise BundleError(f"{path}: {what} ({rec['path']}) is missing or does not match the manifest "
                                      f"(file changed?); refusing to load it (`enclip-qdrant export {path} --force` "
                                      "rebuilds the towers)")
        actual = sealed_fingerprint(actual, manifest["onnx"])
    if actual != manifest["fingerprint"]:
        raise BundleError(f"{path} does not match its fingerprint {manifest['fingerprint']} (its files hash to "
                          f"{actual}: changed or tampered with); refusing to load it")
