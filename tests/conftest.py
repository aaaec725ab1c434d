"""Shared fixtures: one synthetic catalog and one tiny ensemble, trained once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: fail fast instead of waiting on the network

from enclip_qdrant.catalog.synthetic import make_catalog  # noqa: E402

ARTICLES = ("Dress", "Handbag", "Sneakers", "Cap")
COLOURS = ("Red", "Blue", "Green", "Black", "Yellow", "White")


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shop") / "shop"
    return make_catalog(root, n=480, seed=3, articles=[a.lower() for a in ARTICLES],
                        colours=[c.lower() for c in COLOURS])


@pytest.fixture(scope="session")
def bundle(catalog_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from enclip_qdrant import TrainConfig, train

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return train(catalog_dir, out=out, config=TrainConfig(members=3, preset="tiny", seed=0))


@pytest.fixture(scope="session")
def catalog(catalog_dir: Path):
    from enclip_qdrant import load_catalog

    return load_catalog(catalog_dir)


@pytest.fixture(scope="session")
def other_bundle(catalog, tmp_path_factory: pytest.TempPathFactory):
    """A second, different ensemble: collections built by `bundle` must refuse it."""
    from enclip_qdrant import TrainConfig, train

    return train(catalog, tmp_path_factory.mktemp("bundles") / "other",
                 TrainConfig(members=1, preset="tiny", epochs=1, seed=9, onnx=False))


@pytest.fixture(params=["edge", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty store on each backend: the embedded engine and qdrant-client's local stand-in for a server."""
    from enclip_qdrant.store import EdgeStore, ServerStore

    s = EdgeStore(tmp_path / "home") if request.param == "edge" else ServerStore(":memory:")
    yield s
    s.close()


NO_SERVER = "no real Qdrant: set QDRANT_URL, or QDRANT_BIN (or put a server binary at ~/.qdrant/bin/qdrant)"
TEST_KEY = "enclip-test-key"


@pytest.fixture(scope="session")
def qdrant_node():
    """A real Qdrant node: QDRANT_URL, else one started from an existing binary (tests/qdrant_server.py);
    skips without either."""
    from qdrant_server import given_node, local_qdrant, qdrant_binary

    given = given_node()
    if given is not None:
        yield given
        return
    binary = qdrant_binary()
    if binary is None:
        pytest.skip(NO_SERVER)
    with local_qdrant(binary) as started:
        yield started


@pytest.fixture(scope="session")
def qdrant_url(qdrant_node) -> str:
    return qdrant_node.url


@pytest.fixture(scope="session")
def qdrant_key_node():
    """A real Qdrant node that demands an API key: QDRANT_URL when QDRANT_API_KEY is set, else one started here
    with QDRANT__SERVICE__API_KEY."""
    from qdrant_server import given_node, local_qdrant, qdrant_binary

    given = given_node()
    if given is not None and given.api_key:
        yield given
        return
    binary = qdrant_binary()
    if binary is None:
        pytest.skip(NO_SERVER if given is None else "QDRANT_URL has no QDRANT_API_KEY and no binary to start one")
    with local_qdrant(binary, api_key=TEST_KEY) as started:
        yield started


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The store and fusion contracts run each case on every backend; the real-server cases carry `server`."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "server" in callspec.id.split("-"):
            item.add_marker(pytest.mark.server)
