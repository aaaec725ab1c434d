"""Collection metadata goes through one typed object; unknown keys survive, unset ones stay out."""

from __future__ import annotations

import pytest

from enclip_qdrant import CollectionMeta, QueryError, SearchOptions, ServerOptions, StoreError


def test_meta_round_trip_keeps_unknown_keys() -> None:
    doc = {"bundle_fingerprint": "abc", "bundle_path": "/b", "members": ["m0", "m1"], "clusters": 4,
           "catalog": "/c", "created": "2026-01-01T00:00:00+00:00", "from_the_future": {"x": 1}}
    meta = CollectionMeta.from_dict(doc)
    assert meta.members == ("m0", "m1") and meta.previous is None
    assert meta.to_dict() == doc
    assert meta.with_previous("shop-old").to_dict() == doc | {"previous": "shop-old"}
    assert CollectionMeta.from_dict({}).to_dict() == {}


@pytest.mark.parametrize("bad", [{"top_k": 0}, {"fusion": "max"}, {"threshold": 1.5}, {"oversample": 0}])
def test_search_options_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(QueryError):
        SearchOptions(**bad)  # type: ignore[arg-type]


def test_server_options_from_a_mapping() -> None:
    assert ServerOptions.of({"timeout": 5}) == ServerOptions(timeout=5)
    assert ServerOptions.of(None) == ServerOptions()
    with pytest.raises(StoreError):
        ServerOptions.of({"timeout": 0})


def test_one_routing_default() -> None:
    import inspect

    from enclip_qdrant import DEFAULT_THRESHOLD
    from enclip_qdrant.search.routing import route

    assert inspect.signature(route).parameters["threshold"].default == DEFAULT_THRESHOLD == SearchOptions().threshold
