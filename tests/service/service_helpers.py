"""Helpers shared by the service tests: a server-backed collection in qdrant-client's local mode that a
test and the service both see, and a real uvicorn on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from paths import free_port

from enclip_qdrant.api import Connection, Searcher
from enclip_qdrant.store import ServerStore, Store


@dataclass(frozen=True)
class SharedConnection(Connection):
    """A Connection to one in-process qdrant-client: every store opened on it sees the same collections
    (ServerStore with a given client never closes it)."""

    client: Any = None

    def open(self) -> Store:
        return ServerStore(client=self.client)


def searcher_factory(client: Any, bundle: Any, collection: str = "shop"):
    return lambda: Searcher(collection, bundle=bundle, conn=SharedConnection(client=client))


def two_collections(bundle: Any, catalog: Any, home: Path) -> Path:
    """An embedded store at `home` with two collections of the catalog built by enclip: `shop` (the one the
    tests serve) and `other` (one the service must leave alone)."""
    from enclip_qdrant.indexing.run import index_catalog
    from enclip_qdrant.store import EdgeStore

    with EdgeStore(home) as store:
        index_catalog(catalog, bundle, store, "shop")
        index_catalog(catalog, bundle, store, "other")
    return home


@contextmanager
def live_server(app: FastAPI, **settings: Any) -> Iterator[str]:
    """uvicorn in a thread on 127.0.0.1 (`settings`: more uvicorn.Config settings, such as the service's own
    `server_settings`); yields the base URL once /readyz answers."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", **settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=20)
