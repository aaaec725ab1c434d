"""Clusters of similar products and the routers that send a query to its likely clusters.

k-means (scikit-learn) partitions the catalog in the ensemble's joint image space. Two logistic
regressions learn that partition, one from caption embeddings (text queries) and one from image
embeddings (image queries), because a query is not a catalog item: we want calibrated
probabilities, not just a nearest centroid, so routing can search several clusters when unsure.
Everything is stored as plain arrays; no estimator is pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .search_options import DEFAULT_MAX_CLUSTERS, DEFAULT_THRESHOLD, parse_cluster_list  # noqa: F401

AUTO_MAX_K = 16
POINTS_PER_CLUSTER = 50  # auto never makes clusters smaller than this on average


@dataclass(frozen=True)
class LinearRouter:
    """A fitted multinomial logistic regression as arrays: probabilities over clusters 0..K-1."""

    coef: np.ndarray  # (C, D); C == 1 for a binary problem (sklearn's convention)
    intercept: np.ndarray  # (C,)
    classes: np.ndarray  # (C or 2,) cluster ids the columns stand for
    k: int
    temperature: float = 1.0  # logits are divided by it; fitted on held-out data by `calibrated`

    def probs(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x).astype(np.float32)
        out = np.zeros((len(x), self.k), dtype=np.float64)
        if len(self.classes) == 1:
            out[:, int(self.classes[0])] = 1.0
            return out
        logits = (x @ self.coef.T + self.intercept) / self.temperature
        if self.coef.shape[0] == 1:  # binary: sigmoid of one logit
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            p = np.stack([1 - p1, p1], axis=1)
        else:
            logits = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
        out[:, self.classes.astype(int)] = p
        return out

    def calibrated(self, x: np.ndarray, labels: np.ndarray) -> LinearRouter:
        """Temperature scaling (Guo et al., 2017) on data the router was not fitted on.

        Fitted on the training captions, the regression is overconfident on new queries: on fashion-dev
        (13 clusters) it put >= 0.8 on one cluster while the right one was elsewhere 17 % of the time, and
        routing lost 1.4 points of R@10. One temperature, chosen to minimise the held-out log-loss, makes
        "p >= 0.8" mean what it says; the ranking of clusters does not change.
        """
        if len(self.classes) == 1 or len(labels) == 0:
            return self
        grid = np.geomspace(0.25, 32.0, 57)
        rows = np.arange(len(labels))

        def log_loss(t: float) -> float:
            p = replace(self, temperature=float(t)).probs(x)[rows, labels]
            return float(-np.log(np.clip(p, 1e-12, None)).mean())

        return replace(self, temperature=float(min(grid, key=log_loss)))

    @classmethod
    def fit(cls, x: np.ndarray, labels: np.ndarray, k: int, seed: int) -> LinearRouter:
        classes = np.unique(labels)
        if len(classes) == 1:
            return cls(np.zeros((1, x.shape[1]), np.float32), np.zeros(1, np.float32), classes, k)
        from sklearn.linear_model import LogisticRegression  # fitting only: queries never import sklearn

        lr = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
        lr.fit(x, labels)
        return cls(lr.coef_.astype(np.float32), lr.intercept_.astype(np.float32),
                   lr.classes_.astype(np.int64), k)


@dataclass(frozen=True)
class ClusterModel:
    centroids: np.ndarray  # (K, D) in the joint space (see members.joint_embedding)
    text_router: LinearRouter
    image_router: LinearRouter
    criterion: str  # how K was chosen, for the manifest and `info`

    @property
    def k(self) -> int:
        return len(self.centroids)

    def calibrated(self, text_joint: np.ndarray, image_joint: np.ndarray) -> ClusterModel:
        """Both routers temperature-scaled on held-out pairs (captions and images) and their images' clusters."""
        labels = self.assign(image_joint)
        return replace(self, text_router=self.text_router.calibrated(text_joint, labels),
                       image_router=self.image_router.calibrated(image_joint, labels))

    def assign(self, joint: np.ndarray) -> np.ndarray:
        """Nearest centroid: the cluster a catalog image is stored under."""
        d = ((joint[:, None, :] - self.centroids[None, :, :]) ** 2).sum(-1)
        return d.argmin(axis=1)


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
        text_router=LinearRouter.fit(text_joint, labels, k, seed),
        image_router=LinearRouter.fit(image_joint, labels, k, seed),
        criterion=criterion,
    )
    return model, labels


def route(probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
          max_clusters: int = DEFAULT_MAX_CLUSTERS) -> list[tuple[int, float]]:
    """The fewest most-likely clusters whose probability mass reaches `threshold`, at most `max_clusters`."""
    order = np.argsort(-probs)
    chosen: list[tuple[int, float]] = []
    mass = 0.0
    for c in order[:max(1, max_clusters)]:
        chosen.append((int(c), float(probs[c])))
        mass += float(probs[c])
        if mass >= threshold:
            break
    return chosen
