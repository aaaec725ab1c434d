"""The answering verbs run on an ONNX bundle and the embedded store without the training stack or the server
client: `query`, `index`, `eval --bundle` and `serve` each run in a fresh process that then names what it loaded.

The layout test proves no module of theirs imports these libraries; this proves nothing loads them at run time
either (a library importing another, a plugin, a lazy import taken on the way)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from paths import free_port

from enclip_qdrant import Connection, index
from enclip_qdrant.catalog.synthetic import make_catalog

HEAVY = ("torch", "torchvision", "open_clip", "transformers", "sklearn", "qdrant_client")

# Runs the CLI in this process, then prints the heavy modules it loaded; `serve` runs on a thread and is asked
# one search over HTTP before the report.
_RUN = """
import json, sys, threading, time, urllib.request
from enclip_qdrant.cli.app import main
ARGS, PORT = {args!r}, {port!r}

def run():
    sys.argv = ['enclip-qdrant', *ARGS]
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code

if PORT is None:
    run()
else:
    threading.Thread(target=run, daemon=True).start()
    url = f'http://127.0.0.1:{{PORT}}/v1/search'
    body = json.dumps({{'text': 'red dress', 'top_k': 3}}).encode()
    for _ in range(600):
        try:
            req = urllib.request.Request(url, data=body, headers={{'Content-Type': 'application/json'}})
            with urllib.request.urlopen(req, timeout=30) as r:
                print('ANSWER', len(json.load(r)['results']))
            break
        except OSError:
            time.sleep(0.1)
print('LOADED', *[m for m in {heavy!r} if m in sys.modules], flush=True)
import os; os._exit(0)
"""


def _loaded(args: list[str], home: Path, port: int | None = None) -> tuple[list[str], str]:
    code = _RUN.format(args=args, port=port, heavy=HEAVY)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={"ENCLIP_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "120",
                            "HF_HUB_OFFLINE": "1"})
    lines = [x for x in r.stdout.splitlines() if x.startswith("LOADED")]
    assert r.returncode == 0 and lines, r.stdout[-2000:] + r.stderr[-4000:]
    return lines[-1].split()[1:], r.stdout


@pytest.fixture(scope="module")
def served(bundle, catalog, tmp_path_factory) -> Path:
    assert bundle.manifest.get("onnx"), "the session bundle is expected to carry ONNX towers"
    home = tmp_path_factory.mktemp("torchfree") / "home"
    index(catalog, bundle=bundle.path, collection="shop", conn=Connection(home=home))
    return home


@pytest.mark.slow
def test_query_loads_no_training_stack(served) -> None:
    loaded, out = _loaded(["query", "red dress", "--json", "-k", "3"], served)
    assert loaded == []
    assert len(json.loads(out[:out.rindex("LOADED")])["results"]) == 3


@pytest.mark.slow
def test_index_loads_no_training_stack(bundle, catalog_dir, tmp_path) -> None:
    loaded, out = _loaded(["index", str(catalog_dir), "--bundle", str(bundle.path), "--collection", "fresh"],
                          tmp_path / "home")
    assert loaded == []
    assert any((tmp_path / "home").rglob("*")), out  # the collection was really written


@pytest.mark.slow
def test_eval_of_a_given_bundle_loads_no_training_stack(bundle, tmp_path) -> None:
    new = make_catalog(tmp_path / "new", n=60, seed=11)
    table = new / "captions.csv"  # products the bundle never saw: the generator numbers every catalog alike
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    with table.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "id": f"new-{r['id']}"} for r in rows)
    loaded, out = _loaded(["eval", str(new), "--bundle", str(bundle.path), "--json"], tmp_path / "home")
    assert loaded == []
    assert json.loads(out[out.index("{"):out.rindex("LOADED")])["rows"]


@pytest.mark.slow
def test_embedded_serve_loads_no_training_stack(served) -> None:
    port = free_port()
    loaded, out = _loaded(["serve", "--collection", "shop", "--port", str(port)], served, port=port)
    assert "ANSWER 3" in out, out[-2000:]
    assert loaded == []
