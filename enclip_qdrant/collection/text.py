"""The lexical side of hybrid search: which words of a product go into its sparse BM25 vector, and the one
tokenizer that turns them (and queries) into sparse vectors.

Both backends use the same embedder, qdrant-edge's `Bm25` (Qdrant's own tokenizer, stemmer and BM25 term
weights; the IDF half is Qdrant's `Modifier.Idf` on the collection), so a collection built embedded and
pushed to a server is queried with exactly the tokens it was indexed with. qdrant-edge is imported only
when a text vector is actually built or queried, so loading the server backend alone does not load it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from enclip_qdrant.store.base import SparseVec

TEXT_VECTOR = "text_bm25"
# Product texts are a title plus a few category words (~15 tokens), not 256-token documents (Bm25's default):
# with the default every text looks very short and BM25's length normalisation would barely act.
AVG_LEN = 16.0
_WORD = re.compile(r"[^\W_]+")
_JOINABLE = re.compile(r"[\s-]*")  # what may stand between two words a catalog writes as one ("t-shirt", "t shirt")


@dataclass(frozen=True)
class TextRecipe:
    """How a collection's lexical text is made: recorded in its metadata so queries use the same recipe."""

    vector: str = TEXT_VECTOR
    fields: tuple[str, ...] = ()  # payload fields appended to the title, in this order
    bm25: Mapping[str, Any] = field(default_factory=lambda: {"avg_len": AVG_LEN})  # Bm25Config keywords
    # Bm25 token ids of the catalog's compound words ("tshirts", "sweatshirts"; `compound_tokens`): two adjacent
    # words that join into one of them ("t-shirt", "sweat shirt") are read as that word, on both sides.
    joins: frozenset[int] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        doc = {"vector": self.vector, "fields": list(self.fields), "bm25": dict(self.bm25), "source": "title"}
        return doc | ({"joins": sorted(self.joins)} if self.joins else {})

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TextRecipe:
        return cls(vector=str(doc.get("vector", TEXT_VECTOR)), fields=tuple(doc.get("fields", ())),
                   bm25=dict(doc.get("bm25", {})), joins=frozenset(int(i) for i in doc.get("joins", ())))

    def text(self, payload: Mapping[str, Any]) -> str:
        """The product's lexical text from its payload: title, then the recipe's fields' values."""
        parts = [payload.get("text")] + [payload.get(f) for f in self.fields]
        return " ".join(str(p).strip() for p in parts if p is not None and str(p).strip())

    def document(self, payload: Mapping[str, Any]) -> SparseVec | None:
        """The product's sparse vector; None when it has no words (no vector is stored then)."""
        text = self.text(payload)
        if not text:
            return None
        vec = _model(_key(self.bm25)).embed_document(self.normalise(text))
        return SparseVec(list(vec.indices), list(vec.values)) if len(vec.indices) else None

    def query(self, text: str | None) -> SparseVec | None:
        """A query's sparse vector (each distinct token weighs 1); None for no text or only stopwords."""
        if not text or not text.strip():
            return None
        vec = _model(_key(self.bm25)).embed_query(self.normalise(text))
        return SparseVec(list(vec.indices), list(vec.values)) if len(vec.indices) else None

    def normalise(self, text: str) -> str:
        """The text as Bm25 reads it, with adjacent words joined where the catalog writes them as one word:
        "red t-shirt" -> "red tshirt" when the catalog says "Tshirts" (the tokenizer alone would keep "shirt")."""
        if not self.joins:
            return text
        model = _model(_key(self.bm25))
        words = list(_WORD.finditer(text))
        out, i = [], 0
        while i < len(words):
            w = words[i].group()
            if i + 1 < len(words) and _JOINABLE.fullmatch(text[words[i].end():words[i + 1].start()]):
                joined = w + words[i + 1].group()
                if _token(model, joined) in self.joins:
                    out.append(joined)
                    i += 2
                    continue
            out.append(w)
            i += 1
        return " ".join(out)


def _token(model: Any, word: str) -> int | None:
    ids = list(model.embed_query(word).indices)
    return int(ids[0]) if len(ids) == 1 else None


def compound_tokens(texts: Iterable[str], bm25: Mapping[str, Any] | None = None) -> frozenset[int]:
    """Bm25 token ids of the words in `texts` that split into two words of `texts`, or a letter and a word:
    "tshirts" = "t" + "shirts", "sweatshirts" = "sweat" + "shirts". Derived from the catalog itself, so a
    shopper's "t-shirt" or "sweat shirt" finds what this catalog calls Tshirts, with no hand-kept list."""
    vocab = {w.casefold() for t in texts for w in _WORD.findall(t)}
    model = _model(_key(bm25 if bm25 is not None else {"avg_len": AVG_LEN}))

    def split(w: str, i: int) -> bool:
        head, tail = w[:i], w[i:]
        return (head in vocab or i == 1) and tail in vocab and len(tail) >= 3

    out = set()
    for w in vocab:
        if len(w) >= 5 and w.isalpha() and any(split(w, i) for i in range(1, len(w) - 2)):
            tok = _token(model, w)
            if tok is not None:
                out.add(tok)
    return frozenset(out)


def _key(bm25: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(bm25.items()))


@lru_cache(maxsize=8)
def _model(key: tuple[tuple[str, Any], ...]) -> Any:
    """One Bm25 embedder per config, built on first use (the lazy qdrant-edge import lives here)."""
    from qdrant_edge import Bm25, Bm25Config

    return Bm25(Bm25Config(**dict(key)))
