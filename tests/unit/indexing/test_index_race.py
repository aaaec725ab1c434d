"""Two first `index` runs of one collection at once: the loser is told the collection is busy, not taken."""

from __future__ import annotations

import pytest

from enclip_qdrant.files import BusyError
from enclip_qdrant.indexing.run import index_catalog
from enclip_qdrant.store import EdgeStore


def test_the_loser_of_a_create_race_is_told_busy(bundle, catalog, tmp_path):
    with EdgeStore(tmp_path) as store, EdgeStore(tmp_path) as rival:
        real = store.create

        def after_the_rival(name, spec):  # both runs found no collection; the rival's create lands first
            rival.create(name, spec)
            return real(name, spec)

        store.create = after_the_rival
        with pytest.raises(BusyError, match="collection 'shop' is busy: another `enclip-qdrant index` created it"):
            index_catalog(catalog, bundle, store, "shop")
        (made,) = rival.list_collections()
        assert rival.count(made) == 0  # nothing of the loser's was written into the rival's collection
