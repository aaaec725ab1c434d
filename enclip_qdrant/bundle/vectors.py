"""The ensemble's joint embedding: plain numpy, shared by the torch and ONNX engines."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def joint_embedding(per_member: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ensemble's view of each item, for clustering and routing.

    Members are trained independently, so their spaces are not aligned and averaging vectors would mix
    unrelated axes. Concatenating the L2-normalised embeddings, scaled by 1/sqrt(N), gives unit vectors
    whose dot product is exactly the mean of the members' cosines: the ensemble's own similarity.
    """
    parts = [np.asarray(v, dtype=np.float32) for v in per_member.values()]
    joint = np.concatenate(parts, axis=1) / np.sqrt(len(parts))
    return joint / np.maximum(np.linalg.norm(joint, axis=1, keepdims=True), 1e-12)


def concat_rows(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
