"""File names of a bundle on disk, in one torch-free place.

`bundle.py` owns the manifest, `members.py` a member's open_clip folder, `onnx_export.py` / `onnx_runtime.py`
the ONNX towers; they all spell the names from here, so the query path can read a bundle without torch.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
CLUSTERS = "clusters.safetensors"
PLAN = "training.json"

# a member folder (an open_clip `local-dir:` folder, or the text-encoder recipe's equivalent)
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"

# ONNX towers (onnx_export.py writes them, onnx_runtime.py runs them)
ONNX_IMAGE = "image.onnx"
ONNX_TEXT = "text.onnx"
ONNX_TOKENIZER = "tokenizer.json"
SHARED_TEXT_DIR = "text_encoder"  # the shared pretrained text encoder, exported once per bundle
