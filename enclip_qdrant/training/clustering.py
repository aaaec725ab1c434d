"""Fitting the clusters (k-means, k chosen by silhouette when auto) and the routers in the joint space."""

from __future__ import annotations

import numpy as np

from enclip_qdrant.bundle.routers import ClusterModel, LinearRouter

AUTO_MAX_K = 16
POINTS_PER_CLUSTER = 50  # auto never makes clusters smaller than this on average


def choose_k(joint: np.ndarray, seed: int, max_k: int = AUTO_MAX_K) -> tuple[int, str, dict[int, float]]:
    """K with the best silhouette (cosine geometry, 3k-point sample) among 2..min(16, n/50)."""
    n = len(joint)
    upper = min(max_k, n // POINTS_PER_CLUSTER)
    if upper < 2:
        return 1, f"auto: {n} items are too few to split (needs >= {2 * POINTS_PER_CLUSTER})", {}
    scores: dict[int, float] = {}
    from sklearn.cluster import KMeans  # fitting only: queries never import sklearn
    from sklearn.metrics import silhouette_score

    for k in range(2, upper + 1):
        labels = KMeans(k, n_init=3, random_state=seed).fit_predict(joint)
        scores[k] = float(silhouette_score(joint, labels, sample_size=min(n, 3000), random_state=seed))
    best = max(scores, key=lambda k: scores[k])
    return best, f"auto: best silhouette {scores[best]:.3f} over K=2..{upper}", scores


def fit_clusters(image_joint: np.ndarray, text_joint: np.ndarray, k: int | None, seed: int = 0
                 ) -> tuple[ClusterModel, np.ndarray]:
    """Fit k-means on catalog images and both routers; returns the model and every image's cluster."""
    if k is None:
        k, criterion, _ = choose_k(image_joint, seed)
    else:
        criterion = f"fixed: K={k}"
    k = max(1, min(k, len(image_joint)))
    if k == 1:
        labels = np.zeros(len(image_joint), dtype=np.int64)
        centroids = image_joint.mean(axis=0, keepdims=True)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(k, n_init=10, random_state=seed).fit(image_joint)
        labels, centroids = km.labels_.astype(np.int64), km.cluster_centers_
    model = ClusterModel(
        centroids=centroids.astype(np.float32),
        text_router=fit_router(text_joint, labels, k, seed),
        image_router=fit_router(image_joint, labels, k, seed),
        criterion=criterion,
    )
    return model, labels


def fit_router(x: np.ndarray, labels: np.ndarray, k: int, seed: int) -> LinearRouter:
    """A logistic-regression router (scikit-learn fits it; queries only apply its coefficients)."""
    classes = np.unique(labels)
    if len(classes) == 1:
        return LinearRouter(np.zeros((1, x.shape[1]), np.float32), np.zeros(1, np.float32), classes, k)
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
    lr.fit(x, labels)
    return LinearRouter(lr.coef_.astype(np.float32), lr.intercept_.astype(np.float32),
                        lr.classes_.astype(np.int64), k)
