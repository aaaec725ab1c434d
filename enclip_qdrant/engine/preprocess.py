"""open_clip's eval image preprocessing with numpy and PIL only (no torch, torchvision or open_clip).

`preprocess_images(images, cfg)` returns exactly (bit for bit) what the torch path computes:
`torch.stack([members.eval_transform(cfg)(im.convert("RGB")) for im in images]).numpy()`, i.e. open_clip 3's
`image_transform(..., is_train=False)`. Every step is the same operation on the same data:

  * resizing is PIL's `Image.resize`, which is also what torchvision calls for a PIL image, with torchvision's
    and open_clip's output-size arithmetic replicated expression for expression (`int(...)` for a shortest-side
    `Resize`, Python's `round` (half to even) for `ResizeKeepRatio`), and torchvision's "no resize when the size
    is already right";
  * centre crop / pad follow torchvision's `center_crop` and open_clip's `center_crop_or_pad` (zero fill,
    `int(round(d / 2))` offsets);
  * `ToTensor` + `Normalize` is `((v / 255) - mean) / std` in float32; with 8-bit input there are only 256
    values per channel, so the result is a float32 lookup table computed with those very operations.

A setting this module does not replicate raises `ValueError` naming it (`preprocess_supported` says so up
front): the caller then keeps that member on the torch path.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

# open_clip.constants, copied: importing open_clip would import torch
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES = ("shortest", "longest", "squash")
# open_clip's eval path maps "random" to bicubic (the random choice is a training augmentation)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "random": Image.Resampling.BICUBIC}


def _plan(cfg: Mapping[str, Any]) -> tuple[str, int, tuple[int, int], np.ndarray]:
    """(resize_mode, PIL resample, (h, w), (3, 256) lookup table of the normalised values).

    Mirrors `members.eval_transform` -> `open_clip.image_transform(is_train=False)`; raises ValueError naming
    the first setting it does not replicate."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"preprocess_cfg must be a mapping, not {type(cfg).__name__}")
    if "size" not in cfg:
        raise ValueError("preprocess_cfg has no 'size'")
    size = cfg["size"]
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, (list, tuple)) and len(size) == 2 \
            and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"preprocess size {size!r} is not supported (an int or [height, width] of ints)")
    if min(hw) <= 0:
        raise ValueError(f"preprocess size {size!r} must be positive")

    resize_mode = cfg.get("resize_mode", "shortest") or "shortest"
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"preprocess resize_mode {resize_mode!r} is not supported ({', '.join(RESIZE_MODES)})")
    interpolation = cfg.get("interpolation", "bicubic") or "bicubic"
    if interpolation not in _RESAMPLE:
        raise ValueError(f"preprocess interpolation {interpolation!r} is not supported "
                         f"({', '.join(_RESAMPLE)})")

    mean = _channels(cfg.get("mean"), OPENAI_DATASET_MEAN, "mean")
    std = _channels(cfg.get("std"), OPENAI_DATASET_STD, "std")
    if not np.all(std != 0):
        raise ValueError(f"preprocess std {list(cfg.get('std'))!r} has a zero")
    # ToTensor: uint8 -> float32 / 255; Normalize: (x - mean) / std, all in float32, per channel
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    lut = ((values[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)
    return resize_mode, _RESAMPLE[interpolation], hw, lut


def _channels(value: Any, default: tuple[float, ...], name: str) -> np.ndarray:
    # eval_transform passes tuple(cfg[name]); open_clip then uses `mean or OPENAI_DATASET_MEAN`
    if value is None:
        raise ValueError(f"preprocess_cfg has no {name!r}")  # eval_transform would fail on it too
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        raise ValueError(f"preprocess {name} {value!r} is not supported (a list of 1 or 3 numbers)")
    value = tuple(value) or default
    if len(value) not in (1, 3):
        raise ValueError(f"preprocess {name} {list(value)!r} is not supported (a list of 1 or 3 numbers)")
    return np.broadcast_to(np.asarray(value, dtype=np.float32), (3,)).copy()


def preprocess_supported(cfg: Mapping[str, Any]) -> bool:
    """True when `preprocess_images` replicates `members.eval_transform(cfg)` for this cfg."""
    try:
        _plan(cfg)
    except ValueError:
        return False
    return True


def _resize(img: Image.Image, hw: Sequence[int], resample: int) -> Image.Image:
    # torchvision.transforms.functional.resize on a PIL image: no-op at the same size, else PIL's resize
    if [img.height, img.width] == [hw[0], hw[1]]:
        return img
    return img.resize((hw[1], hw[0]), resample)


def _short_side_size(img: Image.Image, size: int) -> tuple[int, int]:
    # torchvision's _compute_resized_output_size with size=[size] (resize the shortest side)
    h, w = img.height, img.width
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def _keep_ratio_size(img: Image.Image, target: tuple[int, int], longest: float) -> tuple[int, int]:
    # open_clip's ResizeKeepRatio.get_params, without the random factors (always off at eval)
    source_size = (img.height, img.width)
    h, w = source_size
    target_h, target_w = target
    ratio_h = h / target_h
    ratio_w = w / target_w
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1. - longest)
    ratio_factor = (1., 1.)
    size = [round(x * f / ratio) for x, f in zip(source_size, ratio_factor, strict=True)]
    return size[0], size[1]


def _center_crop_or_pad(arr: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    # torchvision's center_crop and open_clip's center_crop_or_pad (identical, both fill 0) on an (H, W, 3) array
    crop_height, crop_width = out_hw
    image_height, image_width = arr.shape[:2]
    if crop_width > image_width or crop_height > image_height:
        left = (crop_width - image_width) // 2 if crop_width > image_width else 0
        top = (crop_height - image_height) // 2 if crop_height > image_height else 0
        right = (crop_width - image_width + 1) // 2 if crop_width > image_width else 0
        bottom = (crop_height - image_height + 1) // 2 if crop_height > image_height else 0
        arr = np.pad(arr, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=0)
        image_height, image_width = arr.shape[:2]
        if crop_width == image_width and crop_height == image_height:
            return arr
    crop_top = int(round((image_height - crop_height) / 2.0))
    crop_left = int(round((image_width - crop_width) / 2.0))
    return arr[crop_top:crop_top + crop_height, crop_left:crop_left + crop_width]


def _one(img: Image.Image, mode: str, resample: int, hw: tuple[int, int], lut: np.ndarray) -> np.ndarray:
    img = img.convert("RGB")  # what Ensemble.encode_images hands to the transform
    if mode == "squash":
        arr = np.asarray(_resize(img, hw, resample).convert("RGB"))
    elif mode == "longest":
        img = _resize(img, _keep_ratio_size(img, hw, 1.), resample)
        arr = _center_crop_or_pad(np.asarray(img.convert("RGB")), hw)
    else:  # shortest
        if hw[0] == hw[1]:  # open_clip: torchvision Resize(int), shortest side
            img = _resize(img, _short_side_size(img, hw[0]), resample)
        else:  # open_clip builds ResizeKeepRatio(image_size) here: its default BICUBIC, whatever cfg says
            img = _resize(img, _keep_ratio_size(img, hw, 0.), Image.Resampling.BICUBIC)
        arr = _center_crop_or_pad(np.asarray(img.convert("RGB")), hw)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:  # cannot happen for an RGB image
        raise ValueError(f"unexpected pixel array {arr.dtype} {arr.shape}")
    out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
    for c in range(3):
        out[c] = lut[c][arr[:, :, c]]
    return out


def preprocess_images(images: Sequence[Image.Image], cfg: Mapping[str, Any]) -> np.ndarray:
    """float32 (N, 3, H, W): open_clip's eval transform of `cfg` on each image (converted to RGB first).

    Equal to `torch.stack([members.eval_transform(cfg)(im.convert("RGB")) for im in images]).numpy()`.
    Raises ValueError naming a cfg setting it does not replicate (see `preprocess_supported`)."""
    mode, resample, hw, lut = _plan(cfg)
    if not len(images):
        return np.zeros((0, 3, *hw), dtype=np.float32)
    return np.stack([_one(im, mode, resample, hw, lut) for im in images])
