"""When `index` has the embedded store build HNSW: by size, unless asked, and kept once on."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from enclip_qdrant.indexing import run
from enclip_qdrant.progress import NullProgress
from enclip_qdrant.store import CollectionSpec, EdgeStore, PointRecord
from enclip_qdrant.store.base import CollectionOptions

SPEC = CollectionSpec(vectors={"a": 4, "b": 4}, options=CollectionOptions(indexing_threshold=1))


def _points(start: int, n: int) -> list[PointRecord]:
    rng = np.random.default_rng(start)
    return [PointRecord(str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))), {"a": rng.normal(size=4), "b": rng.normal(size=4)},
                        {"cluster": i % 3}) for i in range(start, start + n)]


def test_hnsw_by_size_then_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "HNSW_MIN_POINTS", 100)
    with EdgeStore(tmp_path) as store:
        store.create("shop", SPEC)
        store.upsert("shop", _points(0, 60))
        small = run.build_index(store, "shop", None, NullProgress())
        assert not small.hnsw and small.indexed_vectors == 0  # below the threshold: exact search
        store.upsert("shop", _points(60, 60))
        big = run.build_index(store, "shop", None, NullProgress())
        assert big.hnsw and big.indexed_vectors == big.vectors == 240
        store.delete("shop", [p.id for p in _points(0, 90)])  # shrinking below it keeps HNSW on
        assert run.build_index(store, "shop", None, NullProgress()).hnsw
        assert not run.build_index(store, "shop", False, NullProgress()).hnsw  # --no-hnsw
        assert not run.build_index(store, "shop", None, NullProgress()).hnsw  # and stays off


def test_forced_hnsw_on_a_small_collection(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as store:
        store.create("shop", SPEC)
        store.upsert("shop", _points(0, 100))  # 1.6 KB a vector: above the 1 KB threshold
        state = run.build_index(store, "shop", True, NullProgress())
        assert state.hnsw and state.indexed_vectors == 200
