"""Clusters and routers in clusters.safetensors (never pickled)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from enclip_qdrant.bundle.routers import ClusterModel, LinearRouter
from enclip_qdrant.errors import BundleError, first_line
from enclip_qdrant.files import atomic_write_bytes

if TYPE_CHECKING:
    pass


def save_clusters(path: Path, clusters: ClusterModel) -> None:
    arrays: dict[str, np.ndarray] = {"centroids": clusters.centroids}
    for name, r in (("text", clusters.text_router), ("image", clusters.image_router)):
        arrays |= {f"{name}_coef": r.coef, f"{name}_intercept": r.intercept, f"{name}_classes": r.classes,
                   f"{name}_temperature": np.array([r.temperature], dtype=np.float64)}
    data = save_safetensors({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                            metadata={"criterion": clusters.criterion})
    atomic_write_bytes(path, data)


def load_clusters(path: Path, criterion: str) -> ClusterModel:
    """The clusters and routers; a corrupt or incomplete file is one `BundleError`, never a traceback."""
    try:
        a = load_safetensors(path.read_bytes())
        k = len(a["centroids"])

        def router(name: str) -> LinearRouter:
            t = a.get(f"{name}_temperature")  # absent in bundles made before calibration: uncalibrated
            return LinearRouter(a[f"{name}_coef"], a[f"{name}_intercept"], a[f"{name}_classes"], k,
                                1.0 if t is None else float(t[0]))

        return ClusterModel(a["centroids"], router("text"), router("image"), criterion)
    except Exception as e:  # safetensors raises its own error type; a missing array is a KeyError
        raise BundleError(f"{path} is corrupt: {first_line(e)}") from e
