"""Blue/green and rollback while `serve` runs on the embedded store: another process builds the new collection
and moves the alias; the running service follows it, with a watcher searching throughout that sees no failed
answer and no answer mixing the two bundles. An in-place `index` of the served collection says what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from service_helpers import live_server

from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.service import ServeOptions, create_app
from enclip_qdrant.store import EdgeStore

pytestmark = pytest.mark.slow
TEXT = "text_bm25"  # the words' list, in every collection's ranks: the members tell the bundles apart


def _cli(home, *args: str) -> subprocess.CompletedProcess:
    """The CLI in its own process: the embedded store's shard locks are per process, as for a user's shell."""
    env = {**os.environ, "ENCLIP_HOME": str(home), "COLUMNS": "200"}
    env.pop("QDRANT_URL", None)
    return subprocess.run([sys.executable, "-m", "enclip_qdrant", *args], capture_output=True, text=True,
                          timeout=600, env=env)


class Watcher(threading.Thread):
    """Searches without pause; keeps each answer's status and the members that ranked its first result."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.stop, self.seen = base, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(timeout=60) as c:
            while not self.stop.is_set():
                r = c.post(f"{self.base}/v1/search", json={"text": "red dress", "top_k": 3, "explain": True})
                ranks = r.json()["results"][0]["member_ranks"] if r.status_code == 200 else None
                members = None if ranks is None else frozenset(ranks) - {TEXT}
                self.seen.append((r.status_code, members, r.text[:200] if r.status_code != 200 else ""))


def _wait_for(base: str, physical: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ready = httpx.get(f"{base}/readyz", timeout=30).json()
        if ready.get("physical") == physical:
            return ready
        assert time.monotonic() < deadline, f"the service did not switch to {physical}: {ready}"
        time.sleep(0.1)


def _blue_green(home, catalog_dir, bundle) -> dict:
    """`index --blue-green` of `shop` with `bundle` from another shell: its JSON report."""
    r = _cli(home, "index", str(catalog_dir), "--bundle", str(bundle.path), "--collection", "shop", "--blue-green",
             "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@contextmanager
def _watched(home, bundle, catalog) -> Iterator[tuple[str, str, Watcher]]:
    """`shop` indexed with `bundle` and served (following its alias), a watcher searching it without pause:
    (its first physical collection, the service's URL, the watcher), stopped when the block ends."""
    with EdgeStore(home) as store:
        blue = index_catalog(catalog, bundle, store, "shop").physical
    app = create_app(ServeOptions(home=home, collection="shop", follow_seconds=0.2))
    with live_server(app) as base:
        watcher = Watcher(base)
        watcher.start()
        try:
            time.sleep(0.5)
            yield blue, base, watcher
        finally:
            watcher.stop.set()
            watcher.join(timeout=60)


def test_blue_green_and_rollback_while_serving(bundle, other_bundle, catalog, catalog_dir, tmp_path):
    home = tmp_path / "home"
    with _watched(home, bundle, catalog) as (blue, base, watcher):
        report = _blue_green(home, catalog_dir, other_bundle)
        assert report["switched"] and report["previous"] == blue != report["physical"]
        ready = _wait_for(base, report["physical"])
        assert ready["bundle"] == other_bundle.fingerprint
        time.sleep(0.5)
        # the old collection is released: another process can open it now
        with EdgeStore(home) as other:
            assert other.count(blue) == len(catalog.products)

        back = _cli(home, "rollback", "shop", "--json")
        assert back.returncode == 0, back.stderr[-2000:]
        assert json.loads(back.stdout)["switched_to"] == blue
        ready = _wait_for(base, blue)
        assert ready["bundle"] == bundle.fingerprint
        time.sleep(0.5)
    statuses = [s for s, _, _ in watcher.seen]
    failed = [(s, t) for s, _, t in watcher.seen if s != 200]
    assert len(statuses) > 20 and not failed, failed[:3]
    # every answer came from one bundle, and answers from both were seen, in order: blue, green, blue
    kinds = [m for _, m, _ in watcher.seen]
    assert set(kinds) == {frozenset(bundle.vectors), frozenset(other_bundle.vectors)}
    runs = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert runs == [frozenset(bundle.vectors), frozenset(other_bundle.vectors), frozenset(bundle.vectors)]


def test_blue_green_with_the_same_bundle_while_serving(bundle, catalog, catalog_dir, tmp_path):
    """Rows changed, same bundle, service running: `index --blue-green` builds the twin and the service follows."""
    home = tmp_path / "home"
    with _watched(home, bundle, catalog) as (blue, base, watcher):
        report = _blue_green(home, catalog_dir, bundle)
        assert (report["physical"], report["previous"], report["switched"]) == (f"{blue}-b", blue, True)
        assert _wait_for(base, f"{blue}-b")["bundle"] == bundle.fingerprint
        time.sleep(0.5)
    failed = [(s, t) for s, _, t in watcher.seen if s != 200]
    assert len(watcher.seen) > 10 and not failed, failed[:3]


def test_in_place_index_of_the_served_collection_says_what_to_do(bundle, catalog, catalog_dir, tmp_path):
    home = tmp_path / "home"
    with EdgeStore(home) as store:
        index_catalog(catalog, bundle, store, "shop")
    app = create_app(ServeOptions(home=home, collection="shop", follow_seconds=0.2))
    with live_server(app) as base:
        r = _cli(home, "index", str(catalog_dir), "--bundle", str(bundle.path), "--collection", "shop")
        assert httpx.post(f"{base}/v1/search", json={"text": "red dress"}, timeout=30).status_code == 200
    assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    line = " ".join(r.stderr[r.stderr.index("error:"):].split())  # one message, wrapped to the terminal's width
    assert "in use by another process" in line and "--blue-green" in line
