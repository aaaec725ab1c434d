"""`evaluate` / `enclip-qdrant eval`: a held-out split, every ranking scored on the same queries, honest refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import ndcg_score
from typer.testing import CliRunner

from enclip_qdrant.bundle.manifest import seen_product_ids
from enclip_qdrant.errors import BundleError, CatalogError, QueryError
from enclip_qdrant.evaluation.metrics import ndcg_at
from enclip_qdrant.evaluation.queries import KEYWORDS, QUERIES, TITLES, read_queries, split_test
from enclip_qdrant.evaluation.run import evaluate
from enclip_qdrant.training.config import TrainConfig

RANKINGS = ["member m0", "member m1", "ensemble RRF", "ensemble DBSF", "routed top-1", "routed p>=0.9"]
# the keyword and queries-file sets also score dense + BM25 text (titles stay dense-only: a title's own words)
HYBRID = ["hybrid RRF", "hybrid routed p>=0.9", "hybrid RRF w=1", "hybrid routed p>=0.9 w=1", "hybrid RRF w=4",
          "hybrid routed p>=0.9 w=4"]
CONFIG = TrainConfig(onnx=False, members=2, preset="tiny", epochs=6)  # ~10 s on one thread; 2 epochs stay near chance


@pytest.fixture(scope="module")
def queries_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("queries") / "queries.jsonl"
    path.write_text(json.dumps({"query": "red dress", "relevant": {"articleType": "Dress", "baseColour": "Red"}})
                    + "\n\n" + json.dumps({"query": "purple cap", "relevant": {"baseColour": "purple"}}) + "\n")
    return path


@pytest.fixture(scope="module")
def report(catalog, queries_file, tmp_path_factory: pytest.TempPathFactory):
    return evaluate(catalog, config=CONFIG, queries_file=queries_file, seed=0,
                    workdir=tmp_path_factory.mktemp("eval"))


@pytest.mark.slow
def test_every_ranking_is_scored_on_both_query_sets(report):
    assert [r.ranking for r in report.rows_for(TITLES)] == RANKINGS
    for query_set in (QUERIES, KEYWORDS):
        assert [r.ranking for r in report.rows_for(query_set)] == RANKINGS + HYBRID
    assert report.query_sets[TITLES].queries == report.test_products
    # the purple cap line has no relevant product (no purple in the catalog): counted, not scored
    assert (report.query_sets[QUERIES].queries, report.query_sets[QUERIES].skipped) == (1, 1)
    for r in report.rows:
        m = r.metrics(report.top_k)
        for name, v in m.items():
            if v is not None and name not in ("latency_ms", "clusters_searched"):
                assert 0.0 <= v <= 1.0, (r.ranking, name, v)
        assert m["recall@10"] >= m["recall@5"] >= m["recall@1"]
        assert r.latency_ms > 0 and r.attribute_precision is not None
        routed = r.kind == "routed" or "routed" in r.ranking
        assert (r.routing_accuracy is not None) == routed and (r.clusters_searched is not None) == routed
    top1 = next(r for r in report.rows if r.ranking == "routed top-1")
    assert top1.clusters_searched == 1.0


def test_test_split_is_held_out_of_training(report, catalog):
    assert report.trained and report.bundle_path is not None
    assert report.train_products + report.test_products == len(catalog.with_text())
    assert report.test_products == round(0.2 * len(catalog.with_text()))
    assert not seen_product_ids(report.bundle_path) & set(report.test_ids)


def test_ensemble_is_far_above_chance_on_held_out_titles(report, catalog):
    test = [p for p in catalog.products if p.id in set(report.test_ids)]
    chance = float(np.mean([sum(o.text == p.text for o in test) / len(test) for p in test]))
    ensemble = next(r for r in report.rows_for(TITLES) if r.ranking == "ensemble RRF")
    assert ensemble.recall[10] > 3 * chance, (ensemble.recall, chance)
    # and above a random ranking's recall@10 itself, not only its recall@1
    assert ensemble.recall[10] > 3 * report.query_sets[TITLES].chance[10], ensemble.recall


def test_markdown_has_a_table_per_query_set_with_one_line_per_ranking(report):
    md = report.to_markdown()
    tables = [block for block in md.split("\n\n") if block.startswith("| ranking |")]
    assert len(tables) == 3  # titles, the queries file, the keyword queries made from the catalog's fields
    for i, block in enumerate(tables):
        lines = block.strip().splitlines()
        assert lines[0].startswith("| ranking | recall@1 | recall@5 | recall@10 | mrr | ndcg@10 |")
        assert lines[1].startswith("|---|")
        assert [line.split(" | ")[0].strip("| ") for line in lines[2:]] == RANKINGS + (HYBRID if i else [])
    assert "**" in tables[0]  # the best value per column is bold


def test_to_dict_is_json_with_the_split_and_rows(report):
    d = json.loads(json.dumps(report.to_dict()))
    assert d["split"] == {"seed": 0, "test_fraction": 0.2, "train": report.train_products,
                          "test": report.test_products}
    assert d["bundle"]["fingerprint"] == report.bundle_fingerprint
    assert len(d["rows"]) == 3 * len(RANKINGS) + 2 * len(HYBRID)
    assert {"query_set", "ranking", "recall@1", "recall@10", "mrr", "ndcg@10", "attribute_precision@10",
            "routing_accuracy", "latency_ms"} <= set(d["rows"][0])


def test_a_bundle_that_saw_the_test_split_is_refused(catalog, bundle):
    with pytest.raises(BundleError, match="was trained on .* of the .* test products"):
        evaluate(catalog, bundle=bundle)


def test_the_evaluation_bundle_is_reusable_on_its_own_split_only(report, catalog):
    again = evaluate(catalog, bundle=report.bundle_path, seed=0, test_fraction=0.2, top_k=5)
    assert not again.trained and again.bundle_fingerprint == report.bundle_fingerprint
    assert again.test_ids == report.test_ids and again.train_products is None
    assert set(again.rows[0].recall) == {1, 5}
    with pytest.raises(BundleError, match="trained on"):
        evaluate(catalog, bundle=report.bundle_path, seed=1, test_fraction=0.2)
    with pytest.raises(BundleError, match="trained on.*--test-fraction \\(given explicitly"):  # default: everything
        evaluate(catalog, bundle=report.bundle_path)


def test_a_given_bundle_is_evaluated_on_the_whole_of_a_new_catalog(report, catalog):
    """`eval --bundle B NEW_CATALOG`: no training share, every product of the new catalog is a test product."""
    import dataclasses

    new = dataclasses.replace(catalog, products=[p for p in catalog.products if p.id in set(report.test_ids)])
    whole = evaluate(new, bundle=report.bundle_path)
    assert whole.test_fraction == 1.0 and whole.train_products is None
    assert sorted(whole.test_ids) == sorted(p.id for p in new.products if p.text)
    assert whole.rows[0].recall[10] > 0


def test_split_is_seeded_disjoint_and_at_least_20(catalog):
    train, test = split_test(catalog.products, 0.2, seed=4)
    assert (train, test) == split_test(catalog.products, 0.2, seed=4)
    assert not set(train) & set(test) and len(train) + len(test) == len(catalog.products)
    assert len(split_test(catalog.products, 0.01, seed=0)[1]) == 20
    with pytest.raises(CatalogError, match="at least 36"):
        split_test(catalog.products[:30], 0.2, seed=0)
    with pytest.raises(CatalogError, match="between 0 and 1"):
        split_test(catalog.products, 1.5, seed=0)
    with pytest.raises(CatalogError, match="between 0 and 1"):  # all held out: only for a given bundle
        split_test(catalog.products, 1.0, seed=0)
    assert split_test(catalog.products, 1.0, seed=0, whole=True)[0] == []


def test_ndcg_counts_every_relevant_product_in_the_ideal():
    assert ndcg_at([False, True], 1, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at([True], 2, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))  # one of two found
    assert ndcg_at([False] * 10, 3, 10) == 0.0
    flags = [True, False, True, False, False, True, False, False, False, False]
    assert ndcg_at(flags, 3, 10) == pytest.approx(ndcg_score([flags], [list(range(10, 0, -1))], k=10))


def test_queries_file_mistakes_name_their_line(catalog, tmp_path):
    bad = tmp_path / "q.jsonl"
    for text, message in [('{"query": "x"}\n', "line 1: expected"), ('\nnot json\n', "line 2: not JSON"),
                          ('{"query": "x", "relevant": {"colour": "Red"}}\n', "no catalog column 'colour'"),
                          ("\n", "holds no queries")]:
        bad.write_text(text)
        with pytest.raises(QueryError, match=message):
            read_queries(bad, catalog)
    with pytest.raises(QueryError, match="cannot read"):
        read_queries(tmp_path / "missing.jsonl", catalog)


@pytest.mark.slow
def test_cli_eval_json(catalog_dir, tmp_path, monkeypatch):
    from enclip_qdrant.cli.app import app

    monkeypatch.setenv("ENCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    result = CliRunner().invoke(app, ["eval", str(catalog_dir), "--preset", "tiny", "--members", "2", "--epochs", "1",
                                      "--test-fraction", "0.1", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) >= {"catalog", "bundle", "split", "top_k", "clusters", "query_sets", "encode_ms", "rows"}
    assert out["split"]["test"] == 48 and out["split"]["train"] == 432
    assert out["bundle"]["trained"]
    assert Path(out["bundle"]["path"]).is_relative_to((tmp_path / "home" / "eval").resolve())
    assert [r["ranking"] for r in out["rows"] if r["query_set"] == TITLES] == RANKINGS
    assert set(out["query_sets"]) == {TITLES, KEYWORDS}
    assert [r["ranking"] for r in out["rows"] if r["query_set"] == KEYWORDS] == RANKINGS + HYBRID
    for r in out["rows"]:
        if r["query_set"] == KEYWORDS:
            assert r["type_precision@10"] is not None
            continue
        assert r["query_set"] == TITLES and r["queries"] == 48
        assert 0 <= r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1


def test_eval_takes_field_cols_and_an_unknown_column_is_one_line(catalog_dir, tmp_path):
    from enclip_qdrant.cli.app import app

    result = CliRunner().invoke(app, ["eval", str(catalog_dir), "--preset", "tiny", "--members", "1", "--epochs", "1",
                                      "--field-cols", "nosuchcolumn", "--home", str(tmp_path / "h")])
    assert result.exit_code != 0
    assert "nosuchcolumn" in str(result.exception) and "\n" not in str(result.exception).strip()


def test_protocol_metrics_are_beirs_definitions():
    """R@k over the relevant set, P@k over k, MRR within the top k: checked on rankings worked out by hand."""
    from enclip_qdrant.evaluation.protocol import score

    got = score([["a", "x", "b"], ["y", "z", "c"], ["q", "r", "s"]],
                [frozenset({"a", "b", "c", "d"}), frozenset({"c"}), frozenset({"t"})], top_k=3)
    assert got == pytest.approx({"R@1": (1 / 4) / 3, "R@3": (2 / 4 + 1) / 3, "P@1": 1 / 3, "P@3": (2 / 3 + 1 / 3) / 3,
                                 "MRR": (1 + 1 / 3) / 3})


def test_protocol_is_scored_over_the_held_out_products(report, catalog, tmp_path):
    """`eval --protocol DIR`: ground truth cut to the held-out products (queries left with none dropped), each
    member, the dense ensemble and the default query scored, in every output; bad folders are one line."""
    from enclip_qdrant.evaluation.protocol import read_protocol

    test_ids = set(report.test_ids)
    by_type: dict[str, dict[str, int]] = {}
    for p in catalog.products:
        by_type.setdefault(str(p.fields["articleType"]), {})[p.id] = 1
    by_type["Nothing held out"] = {next(p.id for p in catalog.products if p.id not in test_ids): 1}
    folder = tmp_path / "kagl"
    folder.mkdir()
    (folder / "fine-category.json").write_text(json.dumps(by_type))
    (folder / "text-to-image.json").write_text(json.dumps({p.text: {p.id: 1} for p in catalog.products if p.text}))
    again = evaluate(catalog, bundle=report.bundle_path, seed=0, test_fraction=0.2, protocol=folder)
    fine = [r for r in again.protocol if r.task == "fine-category"]
    assert {r.ranking for r in fine} == {"member m0", "member m1", "ensemble RRF", "ensemble DBSF",
                                         "hybrid RRF (all clusters)", "default query"}
    assert fine[0].queries == len(by_type) - 1  # the query with no held-out product is dropped
    assert set(fine[0].metrics) == {"R@1", "R@10", "P@1", "P@10", "MRR"}
    best = max(r.metrics["P@10"] for r in fine)
    assert best > 1 / len(by_type)  # far above a random ranking's share of one type
    assert "**protocol fine-category" in again.to_markdown() and again.to_dict()["protocol"]["rows"]
    assert next(r for r in again.protocol if r.task == "text-to-image").queries <= len(test_ids)
    with pytest.raises(QueryError, match="none of"):
        read_protocol(tmp_path)
    (folder / "colour.json").write_text("[1, 2]")
    with pytest.raises(QueryError, match="colour.json must map"):
        read_protocol(folder)


def test_ndcg_matches_scikit_learn() -> None:
    """Our numpy nDCG against the reference: sklearn's ndcg_score on the list with fillers and missed items."""
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 12))
        flags = [bool(x) for x in rng.random(int(rng.integers(0, 15))) < 0.4]
        n_rel = int(sum(flags) + rng.integers(0, 5))
        missing = max(0, n_rel - sum(flags))
        y_true = np.array([[*map(float, flags), *[0.0] * k, *[1.0] * missing]])
        y_score = np.arange(y_true.shape[1], 0, -1, dtype=float)[None, :]
        want = float(ndcg_score(y_true, y_score, k=k, ignore_ties=True)) if y_true.shape[1] > 1 else 0.0
        assert ndcg_at(flags, n_rel, k) == pytest.approx(want, abs=1e-12), (flags, n_rel, k)
