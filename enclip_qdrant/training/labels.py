"""Clusters people can read: a short label per cluster from what its products have in common.

At training time every catalog product's cluster is known. Each product becomes a set of terms: the words
of its title (scikit-learn's tokenizer and English stop words; no numbers, no one-letter tokens) and the
values of its categorical fields (few distinct values, no digits: "Tshirts", "Men", "Blue"). A term's
score for a cluster is how much more often the cluster's products carry it than the other products do
(difference of the two proportions, in [-1, 1]): a word every product has scores 0, a word only and always
in the cluster scores 1; on a tie a field value beats a title word. The best few terms, joined by " · "
and kept under `MAX_CHARS`, are the label:

    "Dress · Women · Red"        "Sneakers · Shoes"

Deterministic (ties broken by the term itself), stored in the bundle manifest (`clusters.labels`), and
read back here without torch so `info` stays cheap. Old bundles have no labels: callers show plain ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAX_CHARS = 40
MAX_TERMS = 3
MIN_SCORE = 0.2  # terms after the first must be this much more common inside the cluster than outside
SEPARATOR = " · "
_TOKEN = r"(?u)\b[^\W\d_]{2,}\b"  # words of 2+ letters: no numbers, no ids like "10001" or "a1"
_MAX_VALUE_CHARS = 24  # longer field values are descriptions, not categories
_DIGIT = re.compile(r"\d")


def _categorical_values(fields: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per product, the values of its categorical fields: text without digits, repeated across products,
    in a field that has at most half as many distinct values as products (ids and free text are not)."""
    n = len(fields)
    per_field: dict[str, dict[str, int]] = {}
    for f in fields:
        for key, value in f.items():
            if isinstance(value, str) and value.strip() and len(value) <= _MAX_VALUE_CHARS \
                    and not _DIGIT.search(value):
                counts = per_field.setdefault(key, {})
                counts[value.strip()] = counts.get(value.strip(), 0) + 1
    keep = {k for k, counts in per_field.items()
            if len(counts) <= max(1, n // 2) and max(counts.values()) >= 2}
    return [[str(f[k]).strip() for k in sorted(keep) if isinstance(f.get(k), str) and str(f[k]).strip() in
             per_field[k]] for f in fields]


def cluster_labels(texts: Sequence[str | None], fields: Sequence[Mapping[str, Any]] | None,
                   assignment: Sequence[int] | np.ndarray, k: int) -> list[str]:
    """A label for each of clusters 0..k-1 ("" for a cluster with no products or nothing to say).

    `texts`: each product's title (None when the catalog has none); `fields`: each product's other
    catalog columns; `assignment`: each product's cluster."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    assignment = np.asarray(assignment, dtype=np.int64)
    n = len(assignment)
    fields = fields if fields is not None else [{}] * n
    if len(texts) != n or len(fields) != n:
        raise ValueError("texts, fields and assignment must describe the same products")
    values = _categorical_values(fields)
    # One "document" per product: its field values (case kept for display) and its title words.
    tokenize = CountVectorizer(token_pattern=_TOKEN, lowercase=True, stop_words=sorted(ENGLISH_STOP_WORDS)
                               ).build_analyzer()
    display: dict[str, str] = {}  # lowercased term -> how it is shown (a field's own spelling wins)
    curated: set[str] = set()  # terms that are field values: on a tie they beat title words
    docs: list[list[str]] = []
    for text, vals in zip(texts, values, strict=True):
        terms: set[str] = set()
        for v in vals:
            display.setdefault(v.lower(), v)
            terms.add(v.lower())
            curated.add(v.lower())
        for w in tokenize(text or ""):
            terms.add(w)
        docs.append(sorted(terms))
    for doc in docs:
        for t in doc:
            display.setdefault(t, t)
    if n == 0 or not display:
        return [""] * k
    vec = CountVectorizer(analyzer=lambda doc: doc, binary=True)  # the terms above, as a product x term matrix
    x = vec.fit_transform(docs).tocsr()
    vocab = vec.get_feature_names_out()
    members = np.zeros((k, n), dtype=np.float64)
    members[assignment, np.arange(n)] = 1.0
    inside = np.asarray((x.T @ members.T).T)  # (k, terms): products of the cluster with the term
    total = np.asarray(x.sum(axis=0)).ravel()
    sizes = members.sum(axis=1)
    labels: list[str] = []
    ranked: list[list[int]] = []
    for c in range(k):
        if sizes[c] == 0:
            ranked.append([])
            continue
        p_in = inside[c] / sizes[c]
        rest = n - sizes[c]
        p_out = (total - inside[c]) / rest if rest > 0 else np.zeros_like(p_in)
        score = p_in - p_out
        # best first; a tie goes to a field value, then to the term itself (deterministic)
        order = sorted((i for i in range(len(vocab)) if score[i] > 0),
                       key=lambda i: (-score[i], vocab[i] not in curated, vocab[i]))
        kept: list[int] = []
        for i in order:
            if kept and score[i] < MIN_SCORE:
                break
            if not any(_same_word(vocab[i], vocab[j]) for j in kept):
                kept.append(i)
        ranked.append(kept)
    for c in range(k):
        labels.append(_join([display[vocab[i]] for i in ranked[c][:MAX_TERMS]]))
    # Two clusters with the same label: give each its next terms (up to the length cap) to tell them apart.
    for _ in range(2):
        seen: dict[str, list[int]] = {}
        for c, label in enumerate(labels):
            if label:
                seen.setdefault(label, []).append(c)
        clashes = [cs for cs in seen.values() if len(cs) > 1]
        if not clashes:
            break
        for cs in clashes:
            for c in cs:
                labels[c] = _join([display[vocab[i]] for i in ranked[c][:MAX_TERMS + 2]])
    return labels


def _same_word(a: str, b: str) -> bool:
    """"check" and "checked", "shoe" and "shoes": one says what the other does (but "men" is not "women")."""
    return a.startswith(b) or b.startswith(a)


def _join(terms: Sequence[str]) -> str:
    out = ""
    for t in terms:
        t = t if len(t) <= MAX_CHARS else t[:MAX_CHARS - 1] + "…"
        candidate = f"{out}{SEPARATOR}{t}" if out else t
        if len(candidate) > MAX_CHARS:
            break
        out = candidate
    return out
