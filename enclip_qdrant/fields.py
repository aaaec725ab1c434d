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

from collections.abc import Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from .errors import BundleError, CatalogError
from .lexical import choose_fields

AUTO, NONE = "auto", "none"
# An image's target: this share on its title, the rest on its field texts (None: uniform over all its positives).
TITLE_SHARE: float | None = 0.5
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


def batch_positives(titles: Sequence[str], own: Sequence[Sequence[str]], extra: Sequence[str],
                    title_share: float | None = None) -> torch.Tensor:
    """Which texts are true of which image: rows are the batch's images, columns its titles then `extra` texts.

    An image's positives are every title equal to its own (catalogs repeat titles) and every extra text among
    its own field texts `own[i]`. Entries are 0/1, or with `title_share` weights: an image with field positives
    puts that share of its target on its title(s) and the rest spread over its field texts."""
    ids = {t: i for i, t in enumerate(dict.fromkeys(titles))}
    title_id = torch.tensor([ids[t] for t in titles])
    slot = {t: j for j, t in enumerate(extra)}
    fields = torch.zeros(len(titles), len(extra))
    for i, ts in enumerate(own):
        js = [slot[t] for t in ts if t in slot]
        fields[i, js] = 1.0
    same_title = (title_id[:, None] == title_id[None, :]).float()
    if title_share is not None:
        has = fields.sum(1, keepdim=True) > 0
        same_title = torch.where(has, title_share * same_title / same_title.sum(1, keepdim=True), same_title)
        fields = (1 - title_share) * fields / fields.sum(1, keepdim=True).clamp(min=1)
    return torch.cat([same_title, fields], dim=1)


class MultiPositiveClipLoss(open_clip.loss.ClipLoss):
    """CLIP's symmetric InfoNCE with several positives per row (a multi-positive / SupCon-style target).

    `positives[i, j]` (images x texts, >= 0) says text j is true of image i. Each image's target is its row,
    normalised (uniform over its positive texts when the entries are 0/1), each text's target uniform over its
    positive images, and the loss is the mean of the two soft-target cross-entropies. With the identity (one
    caption per image) it is exactly `ClipLoss`.
    The logits come from open_clip's `ClipLoss.get_logits`.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                positives: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        pos = positives.to(logits_per_image.dtype)
        rows = pos.sum(1) > 0  # an image or text with no positive in the batch has no target
        cols = pos.sum(0) > 0
        img_target = pos[rows] / pos[rows].sum(1, keepdim=True)
        true_of = (pos.T[cols] > 0).to(pos.dtype)
        txt_target = true_of / true_of.sum(1, keepdim=True)
        return (F.cross_entropy(logits_per_image[rows], img_target)
                + F.cross_entropy(logits_per_text[cols], txt_target)) / 2
