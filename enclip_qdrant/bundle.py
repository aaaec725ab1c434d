"""The trained ensemble on disk: a self-describing directory that loads without unpickling anything.

    bundle/
      manifest.json            format, members (config, vector name, dim, metrics), clusters, training
      members/<name>/          an open_clip local-dir folder per member (config + safetensors)
      clusters.safetensors     centroids and both routers as plain arrays
      training.json            the training plan, kept so an interrupted run resumes

The manifest is written last: a directory without one is a training run still in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

from .clustering import ClusterModel, LinearRouter
from .errors import BundleError
from .members import Ensemble, Member, file_sha256, joint_embedding, load_member

FORMAT = "enclip-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLUSTERS = "clusters.safetensors"


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    ensemble: Ensemble
    clusters: ClusterModel

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


def save_clusters(path: Path, clusters: ClusterModel) -> None:
    arrays: dict[str, np.ndarray] = {"centroids": clusters.centroids}
    for name, r in (("text", clusters.text_router), ("image", clusters.image_router)):
        arrays |= {f"{name}_coef": r.coef, f"{name}_intercept": r.intercept, f"{name}_classes": r.classes,
                   f"{name}_temperature": np.array([r.temperature], dtype=np.float64)}
    tmp = path.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
              metadata={"criterion": clusters.criterion})
    os.replace(tmp, path)


def load_clusters(path: Path, criterion: str) -> ClusterModel:
    a = load_file(str(path))
    k = len(a["centroids"])

    def router(name: str) -> LinearRouter:
        t = a.get(f"{name}_temperature")  # absent in bundles made before calibration: uncalibrated
        return LinearRouter(a[f"{name}_coef"], a[f"{name}_intercept"], a[f"{name}_classes"], k,
                            1.0 if t is None else float(t[0]))

    return ClusterModel(a["centroids"], router("text"), router("image"), criterion)


def bundle_fingerprint(member_hashes: list[str], clusters_hash: str) -> str:
    h = hashlib.sha256()
    for part in [*member_hashes, clusters_hash]:
        h.update(part.encode())
    return h.hexdigest()[:16]


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path / MANIFEST)


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        hint = " (training did not finish: run `enclip-qdrant train` again to resume)" \
            if (Path(path) / "training.json").is_file() else ""
        raise BundleError(f"{path} is not an enclip bundle: no {MANIFEST}{hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath} is corrupt: {e}") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not an enclip bundle manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{path} was written by a newer enclip-qdrant (format "
                          f"{manifest['format_version']}); upgrade to read it")
    return manifest


def seen_product_ids(path: str | Path) -> set[str]:
    """Catalog ids a bundle trained or selected epochs on: an evaluation must not test on these."""
    plan = Path(path) / "training.json"
    if not plan.is_file():
        raise BundleError(f"{path} records no training split (training.json), so its test products cannot be checked")
    data = json.loads(plan.read_text())
    return set(data.get("train_ids", [])) | set(data.get("val_ids", []))


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    path = Path(path)
    manifest = read_manifest(path)
    members: list[Member] = []
    for m in manifest["members"]:
        folder = path / m["path"]
        if verify and file_sha256(folder / "open_clip_model.safetensors") != m["sha256"]:
            raise BundleError(f"member {m['name']} weights do not match the manifest (file changed?)")
        members.append(load_member(folder, m["vector"]))
    cpath = path / CLUSTERS
    if not cpath.is_file():
        raise BundleError(f"{path} has no {CLUSTERS}")
    clusters = load_clusters(cpath, manifest["clusters"]["criterion"])
    return Bundle(path, manifest, Ensemble(members), clusters)
