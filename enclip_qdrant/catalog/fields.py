"""Field-aware training: short texts made from a product's categorical columns, used as extra positives.

A catalog row like (title "Nike Men Blue Cricket Jersey", articleType "Jerseys", baseColour "Blue", gender "Men")
gives the field texts "jerseys", "blue jerseys", "men jerseys", ...: the most specific column (the one with the
most distinct values, here articleType) alone and paired with each other column. During training each product
of a batch brings its title and one of its field texts, and `MultiPositiveClipLoss` treats every text that is
true of an image as a positive: two shirts in a batch are not pushed apart by the text "shirts" (plain CLIP
InfoNCE would make the other shirt a negative).

Which columns: `--field-cols auto` uses the catalog's categorical columns, detected by the same rule that picks
the BM25 hybrid fields (`lexical.choose_fields`, one owner); `--field-cols a,b,c` names them; `none` turns field
training off (plain CLIP loss on titles, exactly as before).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from enclip_qdrant.errors import BundleError, CatalogError

AUTO, NONE = "auto", "none"
# Field values that say "no value": no field text is made of them, and `eval` makes no keyword query of them.
MISSING_VALUES = frozenset({"", "na", "nan", "none", "null", "n/a"})


def parse_field_cols(spec: str | None) -> str:
    """The flag's value as the canonical string the config records: "auto", "none" or "a,b,c" (names as given,
    duplicates dropped). Unknown names are caught later, against the catalog (`resolve_field_cols`)."""
    if spec is None:
        return NONE
    low = spec.strip().lower()
    if low in (AUTO, NONE):
        return low
    names = [n.strip() for n in spec.split(",")]
    if not all(names):
        raise BundleError(f"--field-cols takes auto, none or comma-separated column names, not {spec!r}")
    return ",".join(dict.fromkeys(names))


def resolve_field_cols(spec: str, products: Sequence[Any]) -> tuple[str, ...]:
    """The columns field training uses on this catalog: detected (auto), none, or the named ones, checked."""
    if spec == NONE:
        return ()
    if spec == AUTO:
        return choose_fields(p.fields for p in products)
    known = {k for p in products for k in p.fields}
    names = tuple(spec.split(","))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CatalogError(f"--field-cols: no catalog column {unknown[0]!r} "
                           f"(columns: {', '.join(sorted(known)) or 'none besides image, id and text'})")
    return names


def field_value(v: Any) -> str | None:
    """A field's value as one lower-case word run, or None when it is missing (None or a MISSING_VALUES token)."""
    if v is None:
        return None
    s = " ".join(str(v).split()).lower()
    return None if s in MISSING_VALUES else s


def field_texts(products: Sequence[Any], cols: Sequence[str]) -> list[tuple[str, ...]]:
    """Per product, its field texts: the most specific column's value alone and after each other column's value
    ("shirts", "blue shirts", "men shirts"); a product without that value gets each other value alone."""
    if not cols:
        return [() for _ in products]
    distinct = {c: {field_value(p.fields.get(c)) for p in products} - {None} for c in cols}
    primary = max(cols, key=lambda c: (len(distinct[c]), c))
    out = []
    for p in products:
        head = field_value(p.fields.get(primary))
        others = [v for c in cols if c != primary and (v := field_value(p.fields.get(c))) is not None]
        texts = [head, *(f"{v} {head}" for v in others if v != head)] if head else others
        out.append(tuple(dict.fromkeys(texts)))
    return out


# A payload field joins the lexical text when it holds short words shared by many products (category,
# colour, season...): at most this many distinct values, each at most MAX_WORDS words, mostly text.
MAX_DISTINCT = 200
MAX_WORDS = 4
# Names that say "identifier, location, checksum or number", never words a shopper types.
_SKIP_NAME = re.compile(r"(^|_)(id|ids|uuid|sku|path|file|filename|url|uri|link|hash|sha\d*|md5|year|date|time|"
                        r"price|count|width|height|size_bytes)($|_)", re.IGNORECASE)
_SKIP_SUFFIX = ("id", "path", "url", "hash", "year")


def choose_fields(payloads: Iterable[Mapping[str, Any]], exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The catalog's categorical text fields: low-cardinality short strings, not ids, paths, hashes or years.

    Decided from the data so any catalog works; sorted by name so the same catalog always gets the same recipe."""
    values: dict[str, set[str]] = {}
    bad: set[str] = set(exclude)
    for payload in payloads:
        for key, value in payload.items():
            if key in bad:
                continue
            if not isinstance(value, str) or _looks_numeric(value):
                bad.add(key)
                continue
            seen = values.setdefault(key, set())
            seen.add(value.strip().casefold())
            if len(seen) > MAX_DISTINCT or len(value.split()) > MAX_WORDS:
                bad.add(key)
    return tuple(sorted(k for k, v in values.items() if k not in bad and v and not _skip_name(k)))


def _skip_name(name: str) -> bool:
    low = name.lower()
    return bool(_SKIP_NAME.search(name)) or low.endswith(_SKIP_SUFFIX)


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False
