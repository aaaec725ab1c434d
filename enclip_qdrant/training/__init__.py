"""Training a bundle: config, the output folder's ownership, member jobs (in parallel workers),
augmentation, presets, the field loss, cluster fitting and naming, ONNX export. The only package, with
`engine/torch`, that may import torch, open_clip, transformers or scikit-learn.

Public: `run.train`, `config.TrainConfig`, `export.export_bundle`, `presets.get_preset`.
"""
