"""Training augmentation for low-quality catalog photos.

The catalogs we serve are small, blurry, twice-compressed JPEGs; we teach members to ignore exactly
those defects (rescaling, JPEG artefacts, blur, framing) and nothing else. No hue or saturation
jitter: colour is what shoppers search for ("red dress"), so it must stay a reliable signal.
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2


class LowQuality:
    """Randomly re-degrade an image: down/up-scaling, JPEG re-encoding, Gaussian blur."""

    def __init__(self, p_rescale: float = 0.5, p_jpeg: float = 0.5, p_blur: float = 0.3,
                 rng: random.Random | None = None):
        self.p_rescale, self.p_jpeg, self.p_blur = p_rescale, p_jpeg, p_blur
        self.rng = rng or random.Random()

    def __call__(self, im: Image.Image) -> Image.Image:
        r = self.rng
        if r.random() < self.p_rescale:
            f = r.uniform(0.4, 0.9)
            small = im.resize((max(8, int(im.width * f)), max(8, int(im.height * f))), Image.BILINEAR)
            im = small.resize(im.size, r.choice([Image.BILINEAR, Image.BICUBIC, Image.NEAREST]))
        if r.random() < self.p_jpeg:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=r.randint(15, 70))
            im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        if r.random() < self.p_blur:
            im = im.filter(ImageFilter.GaussianBlur(r.uniform(0.3, 1.2)))
        return im


class TrainTransform:
    """The augmentation, drawn from a seed per sample: the same sample gets the same pixels in any process,
    so results do not depend on how many data-loader workers a machine runs."""

    def __init__(self, preprocess_cfg: Mapping[str, Any]):
        size = preprocess_cfg["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.low = LowQuality(rng=random.Random(0))
        self.tf = v2.Compose([
            self.low,
            # Mild reframing around the portrait aspect of catalog photos, then squash to the model's square.
            v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.6, 0.9), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocess_cfg["mean"]), std=list(preprocess_cfg["std"])),
        ])

    def __call__(self, im: Image.Image, seed: int) -> torch.Tensor:
        self.low.rng.seed(seed)
        with torch.random.fork_rng(devices=[]):  # torchvision draws crops and flips from torch's global generator
            torch.manual_seed(seed)
            return self.tf(im)


def train_transform(preprocess_cfg: Mapping[str, Any]) -> TrainTransform:
    return TrainTransform(preprocess_cfg)
