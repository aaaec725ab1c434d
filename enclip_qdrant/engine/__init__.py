"""Encoding with a bundle: the loader (`load.load_bundle`), the ONNX engine, tokenizers and image
preprocessing without torch; `engine/torch/` holds the torch members. Imports the bundle format and the foundation.
"""
