"""Clusters and routing: our array-only routers must agree with scikit-learn, and routing must be minimal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression

from enclip_qdrant.search.routing import route
from enclip_qdrant.training.clustering import choose_k, fit_clusters, fit_router


@pytest.mark.parametrize("k", [2, 4])
def test_router_probabilities_equal_sklearn(k):
    x, y = make_blobs(400, n_features=12, centers=k, random_state=0)
    router = fit_router(x, y, k, seed=0)
    ref = LogisticRegression(C=10.0, max_iter=2000, random_state=0).fit(x, y)
    np.testing.assert_allclose(router.probs(x), ref.predict_proba(x), atol=1e-4)


def test_router_with_one_class_is_certain():
    router = fit_router(np.ones((5, 3)), np.full(5, 2), k=4, seed=0)
    np.testing.assert_array_equal(router.probs(np.zeros((2, 3))), [[0, 0, 1, 0]] * 2)


def test_auto_k_finds_well_separated_groups():
    x, _ = make_blobs(600, n_features=8, centers=5, cluster_std=0.3, random_state=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k, criterion, scores = choose_k(x, seed=0)
    assert k == 5 and "silhouette" in criterion and set(scores) == set(range(2, 13))


def test_tiny_catalogs_get_one_cluster():
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    model, labels = fit_clusters(x, x, None)
    assert model.k == 1 and set(labels) == {0}
    assert model.text_router.probs(x[:3]).tolist() == [[1.0]] * 3


def test_fit_clusters_assigns_like_kmeans():
    x, truth = make_blobs(300, n_features=6, centers=3, cluster_std=0.2, random_state=2)
    model, labels = fit_clusters(x.astype(np.float32), x.astype(np.float32), 3)
    np.testing.assert_array_equal(model.assign(x.astype(np.float32)), labels)
    assert (model.image_router.probs(x).argmax(1) == labels).mean() > 0.98


def test_route_takes_fewest_clusters_reaching_the_mass():
    p = np.array([0.05, 0.6, 0.25, 0.1])
    assert [c for c, _ in route(p, threshold=0.5)] == [1]
    assert [c for c, _ in route(p, threshold=0.8)] == [1, 2]
    assert [c for c, _ in route(p, threshold=0.99, max_clusters=2)] == [1, 2]
    assert [c for c, _ in route(p, threshold=1.0, max_clusters=10)] == [1, 2, 3, 0]


def test_calibration_tempers_an_overconfident_router_without_reordering():
    # overlapping blobs: a weakly regularised regression is sure of itself on its own training points,
    # and wrong on many new ones
    x, y = make_blobs(1200, n_features=8, centers=4, cluster_std=2.5, random_state=4)
    x = x.astype(np.float32)
    model, labels = fit_clusters(x[:600], x[:600], 4)
    held_out, truth = x[600:], model.assign(x[600:])
    raw = model.text_router
    tuned = model.calibrated(held_out, held_out)
    assert tuned.text_router.temperature != 1.0 and tuned.image_router.temperature != 1.0
    np.testing.assert_array_equal(raw.probs(held_out).argmax(1), tuned.text_router.probs(held_out).argmax(1))

    def log_loss(router):
        return -np.log(np.clip(router.probs(held_out)[np.arange(len(truth)), truth], 1e-12, None)).mean()

    assert log_loss(tuned.text_router) < log_loss(raw)  # what the temperature was chosen for
    # "p >= 0.8" now means about that: the confident queries are right at least ~as often as claimed
    p = tuned.text_router.probs(held_out)
    sure = p.max(1) >= 0.8
    assert sure.any() and (p.argmax(1)[sure] == truth[sure]).mean() >= 0.75


def test_calibration_leaves_a_single_cluster_alone():
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    model, _ = fit_clusters(x, x, None)
    assert model.calibrated(x, x).text_router.temperature == 1.0
