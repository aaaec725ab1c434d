"""The field-aware CLIP loss: products sharing a field value are positives, not negatives."""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F

# An image's target: this share on its title, the rest on its field texts (None: uniform over all its positives).
TITLE_SHARE: float | None = 0.5


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
