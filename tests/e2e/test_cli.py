"""The CLI is a thin shell: JSON shapes, tables, and one-line errors with exit code 1."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from enclip_qdrant.cli.app import app, main

runner = CliRunner()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCLIP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    return tmp_path / "home"


def run(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def indexed(home, catalog_dir, bundle):
    run("index", str(catalog_dir), "--bundle", str(bundle.path), "--json")
    return home


def test_index_then_query_json_with_explain(indexed, bundle):
    out = json.loads(run("query", "red dress", "--json", "--explain", "-k", "5").stdout)
    assert out["query"]["text"] == "red dress"
    assert out["clusters"] and {"id", "p"} <= set(out["clusters"][0])
    assert [r["rank"] for r in out["results"]] == [1, 2, 3, 4, 5]
    for r in out["results"]:
        assert {"rank", "id", "score", "cluster", "payload"} <= set(r)
        # the catalog has text, so the BM25 text prefetch has its own rank column beside the members'
        assert set(r["member_ranks"]) == set(bundle.vectors) | {"text_bm25"}
    dense = json.loads(run("query", "red dress", "--json", "--explain", "-k", "5", "--no-text").stdout)
    assert dense["query"]["text_vector"] is False
    assert all(set(r["member_ranks"]) == set(bundle.vectors) for r in dense["results"])
    weighted = json.loads(run("query", "red dress", "--json", "-k", "5", "--text-weight", "3").stdout)
    assert weighted["query"]["text_vector"] is True


def test_info_json_shows_named_vectors_and_integer_cluster_index(indexed, bundle, catalog):
    out = json.loads(run("info", "--json").stdout)
    (c,) = out["collections"]
    assert c["name"] == f"shop-{bundle.fingerprint[:8]}" and c["aliases"] == ["shop"]  # the name is an alias
    assert c["default"] and c["points"] == len(catalog.products)
    assert c["vectors"] == bundle.vectors
    assert c["sparse_vectors"] == ["text_bm25"] and "gender" in c["metadata"]["lexical"]["fields"]
    assert c["payload_schema"]["cluster"] == "integer"
    assert c["bundle_fingerprint"] == bundle.fingerprint
    assert sum(c["clusters"].values()) == len(catalog.products)


def test_tables_filters_and_contact_sheet(indexed, tmp_path):
    table = run("query", "blue cap", "--filter", "baseColour=Blue", "--clusters", "all", "--sheet",
                str(tmp_path / "s.png")).stdout
    assert "Blue" in table and (tmp_path / "s.png").stat().st_size > 1000
    info = run("info").stdout
    assert "shop" in info and "text_bm25" in info and "BM25" in info


def test_reindex_reports_nothing_to_embed(indexed, catalog_dir, bundle, catalog):
    out = json.loads(run("index", str(catalog_dir), "--bundle", str(bundle.path), "--json").stdout)
    assert out["added"] == 0 and out["unchanged"] == len(catalog.products)


@pytest.mark.parametrize(
    "args, message",
    [
        (["query", "   "], "empty query"),
        (["query", "dress", "--collection", "nope"], "nope"),
        (["index", "/definitely/not/here"], "catalog not found"),
        (["query", "dress", "--clusters", "x,y"], "--clusters"),
        (["query", "dress", "--filter", "colour"], "field=value"),
        (["train", "/definitely/not/here"], "catalog not found"),
        (["train", "/definitely/not/here", "--precision", "fp16"], "--precision must be auto, bf16 or fp32"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(indexed, capsys, monkeypatch, args, message):
    monkeypatch.setattr("sys.argv", ["enclip-qdrant", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_query_before_any_index_says_what_to_do(home, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["enclip-qdrant", "query", "dress"])
    with pytest.raises(SystemExit):
        main()
    assert "run `enclip-qdrant index CATALOG` first" in capsys.readouterr().err


def test_unreachable_server_is_one_line(home, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["enclip-qdrant", "info", "--url", "http://127.0.0.1:1"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1 and "cannot reach Qdrant" in capsys.readouterr().err


def test_python_module_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "enclip_qdrant", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "query" in r.stdout


def test_blue_green_then_rollback(indexed, catalog_dir, bundle, other_bundle, capsys, monkeypatch):
    out = json.loads(run("index", str(catalog_dir), "--bundle", str(other_bundle.path), "--blue-green",
                         "--json").stdout)
    assert out["switched"] and out["previous"] == f"shop-{bundle.fingerprint[:8]}"
    assert len(json.loads(run("query", "red dress", "-k", "3", "--json").stdout)["results"]) == 3
    back = json.loads(run("rollback", "--json").stdout)
    assert back["switched_to"] == out["previous"] and back["bundle"] == str(bundle.path.resolve())
    assert json.loads(run("query", "red dress", "--json").stdout)["results"]
    monkeypatch.setattr("sys.argv", ["enclip-qdrant", "rollback"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and err.startswith("error:") and "nothing to roll back to" in err


def test_push_help_and_unreachable_target(indexed, capsys, monkeypatch):
    assert "--url" in run("push", "--help").stdout
    monkeypatch.setattr("sys.argv", ["enclip-qdrant", "push", "shop", "--url", "http://127.0.0.1:1"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and err.startswith("error: cannot reach Qdrant") and "Traceback" not in err
