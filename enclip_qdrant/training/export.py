"""Export a bundle's towers to ONNX, so queries and indexing run on ONNX Runtime without torch.

Per member: `members/<name>/image.onnx` (pixels -> unit vector) and `text.onnx` (token ids -> unit vector; for
the text-encoder recipe, the shared encoder's sentence vector -> the member head's unit vector) and, for
open_clip's own BPE tokenizer, a `tokenizer.json` the `tokenizers` library reads. A shared pretrained text
encoder is exported once, to `text_encoder/model.onnx` + its `tokenizer.json`.

Nothing is written unless it is proven equal: every tower runs on sample images and texts in torch and in
ONNX Runtime, and an export whose unit vectors differ by more than `TOLERANCE` (or whose tokenizer gives other
ids than the member's) is refused. The manifest's `onnx` section records each file's sha256 (checked when
loaded) and the fingerprint of the weights, configs and clusters it was exported from; the bundle's
fingerprint covers the whole section (manifest.sealed_fingerprint), so exporting again gives a new identity.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from enclip_qdrant.bundle.names import ONNX_IMAGE, ONNX_TEXT, ONNX_TOKENIZER, SHARED_TEXT_DIR
from enclip_qdrant.engine.torch.members import Member, causal_argmax_tower, cut_text_features
from enclip_qdrant.errors import BundleError, EnclipError
from enclip_qdrant.files import file_sha256, json_copy, locked
from enclip_qdrant.progress import NullProgress, Progress

OPSET = 18
TOLERANCE = 1e-4  # max abs difference of unit vectors, torch vs ONNX Runtime
ONNX_FORMAT = 1

# Texts the parity check runs: shopper queries, titles, and strings that stress a tokenizer.
SAMPLE_TEXTS = [
    "red floral dress", "Nike Men Blue T20 Indian Cricket Jersey", "bag", "sunglasses for men",
    "Puma Women Black Running Shoes with a very long description that goes on and on past the context length "
    "of every small member, so truncation is exercised as well as padding",
    "kurta", "  WHITE   sneakers\t", "café crème top", "पुरुषों के जूते", "女士手提包", "😀 party wear",
    "rock &amp; roll t-shirt", "",
]


class UnsupportedExport(EnclipError):
    """This member cannot be exported (its queries keep running on torch); the message says why."""


class _Tower(torch.nn.Module):
    """A member's model behind one `forward` that torch.onnx.export traces."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model


class _ImageTower(_Tower):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)


class _CausalText(_Tower):
    """open_clip's CLIP text tower on ids cut after the longest text's EOT (members._encode_by_length):
    with a causal mask the cut changes nothing but the cost, so the sequence axis is dynamic."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return cut_text_features(self.model, tokens)


class _FullText(_Tower):
    """Any other open_clip text tower: the full context, as `encode_text` sees it."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)


class _HeadText(_Tower):
    """A text-encoder-recipe member's head over the shared encoder's sentence vector."""

    def forward(self, sentence_vector: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(sentence_vector, normalize=True)


class _SentenceEncoder(_Tower):
    """A Hugging Face encoder with the recipe's pooling (attention-masked mean, unit length)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    """Silence file descriptors 1 and 2 themselves: torch's C++ side prints a failed export's whole graph
    there, past Python's sys.stdout, which would corrupt `--json` / `--markdown` output on stdout."""
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no such descriptors (an embedding host): nothing to protect
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: Sequence[str],
            dynamic: Sequence[dict[int, Any]], dest: Path, legacy: bool = False) -> None:
    """torch.onnx.export into `dest`, atomically, without its console chatter. The dynamo exporter by default
    (it keeps a text tower's sequence axis dynamic); `legacy`: the TorchScript exporter, whose image towers
    run 1.3x faster in ONNX Runtime here (683 vs 524 images/s on one thread) but which bakes in every axis
    but the batch."""
    try:
        import onnxscript  # noqa: F401 - the exporter needs it; say so plainly instead of deep in torch
    except ImportError as e:
        raise UnsupportedExport("ONNX export needs the onnxscript package (pip install onnxscript)") from e
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    module.eval()
    quiet = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export", "onnx_ir")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # The TorchScript exporter has no ONNX form of nn.MultiheadAttention's inference fast path
        # (aten::_native_multi_head_attention), which eval-mode ViTs take under no_grad: export the plain path.
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), _quiet_fds(), torch.inference_mode(False), \
                torch.no_grad():
            warnings.simplefilter("ignore")
            if legacy:
                axes = {n: list(d) for n, d in zip(names, dynamic, strict=True)} | {"unit_vector": [0]}
                torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=17, input_names=list(names),
                                  output_names=["unit_vector"], dynamic_axes=axes, verbose=False)
            else:
                torch.onnx.export(module, args, str(tmp), dynamo=True, external_data=False, opset_version=OPSET,
                                  input_names=list(names), output_names=["unit_vector"],
                                  dynamic_shapes=tuple(dynamic), verbose=False)
        os.replace(tmp, dest)
    except UnsupportedExport:
        raise
    except Exception as e:  # the exporter raises many types for graphs it cannot capture
        raise UnsupportedExport(f"torch.onnx.export failed: {str(e).strip().splitlines()[0] if str(e) else e}") \
            from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        tmp.unlink(missing_ok=True)
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _check(name: str, what: str, ref: np.ndarray, got: np.ndarray) -> float:
    diff = float(np.abs(np.asarray(ref, np.float32) - np.asarray(got, np.float32)).max()) if ref.size else 0.0
    if not np.isfinite(diff) or diff > TOLERANCE:
        raise BundleError(f"member {name!r}: the exported {what} tower differs from torch by {diff:.2e} "
                          f"(> {TOLERANCE:g}); not written")
    return diff


def sample_images(n: int = 6, seed: int = 0) -> list[Image.Image]:
    """Deterministic images of the shapes a catalog holds (portrait, landscape, tiny, grey, with alpha)."""
    rng = np.random.default_rng(seed)
    sizes = [(60, 80), (80, 60), (7, 5), (200, 300), (64, 64), (33, 90)]
    images = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        images.append(im.convert("L") if i == 3 else im.convert("RGBA") if i == 4 else im)
    return images


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=65536)


def export_member(member: Member, folder: Path) -> dict[str, Any]:
    """Write `folder/image.onnx`, `folder/text.onnx` (and the tokenizer) for one member; its manifest record."""
    from enclip_qdrant.engine.preprocess import preprocess_images, preprocess_supported

    if not preprocess_supported(member.preprocess_cfg):
        raise UnsupportedExport(f"member {member.name!r}: its image preprocessing {member.preprocess_cfg} has no "
                                "torch-free equivalent")
    model = member.model.eval()
    images = [im.convert("RGB") for im in sample_images()]
    pixels = torch.stack([member.preprocess(im) for im in images])
    if not np.array_equal(preprocess_images(images, member.preprocess_cfg), pixels.numpy()):
        raise UnsupportedExport(f"member {member.name!r}: torch-free preprocessing differs from open_clip's")
    exporter = "torchscript"
    try:
        _export(_ImageTower(model), (pixels[:2],), ["pixels"], [{0: _batch_dim()}], folder / ONNX_IMAGE, legacy=True)
    except UnsupportedExport:
        exporter = "dynamo"
        _export(_ImageTower(model), (pixels[:2],), ["pixels"], [{0: _batch_dim()}], folder / ONNX_IMAGE)
    session = _session(folder / ONNX_IMAGE)
    ref = member.encode_pixels(pixels)
    image_diff = max(_check(member.name, "image", ref, session.run(None, {"pixels": pixels.numpy()})[0]),
                     _check(member.name, "image", ref[:1], session.run(None, {"pixels": pixels.numpy()[:1]})[0]))
    record: dict[str, Any] = {"image": {"path": ONNX_IMAGE, "sha256": file_sha256(folder / ONNX_IMAGE),
                                        "exporter": exporter},
                              "parity": {"image": image_diff}}
    text_cfg = member.model_cfg.get("text_cfg", {})
    if "text_encoder" in member.model_cfg:  # recipes.HeadMember: the head over the shared encoder's vectors
        feats = member.tokenizer(SAMPLE_TEXTS)
        head = _HeadText(model)
        _export(head, (feats[:2],), ["sentence_vector"], [{0: _batch_dim()}], folder / ONNX_TEXT)
        got = _session(folder / ONNX_TEXT).run(None, {"sentence_vector": feats.numpy()})[0]
        record |= {"text_input": "shared", "text": {"path": ONNX_TEXT, "sha256": file_sha256(folder / ONNX_TEXT)}}
    elif text_cfg.get("hf_tokenizer_name"):
        raise UnsupportedExport(f"member {member.name!r}: Hugging Face tokenizers of open_clip members are not "
                                "exported yet")
    else:
        from enclip_qdrant.engine.tokenizers import ClipTokenizer, write_clip_tokenizer

        ctx = int(text_cfg.get("context_length", 77))
        write_clip_tokenizer(folder / ONNX_TOKENIZER)
        tokens = member.tokenizer(SAMPLE_TEXTS)
        ids = ClipTokenizer(folder / ONNX_TOKENIZER, ctx)(SAMPLE_TEXTS)
        if not np.array_equal(ids, tokens.numpy()):
            (folder / ONNX_TOKENIZER).unlink(missing_ok=True)
            raise UnsupportedExport(f"member {member.name!r}: the exported tokenizer gives other ids than "
                                    "open_clip's")
        cut = causal_argmax_tower(model)
        if cut:
            n = int(tokens[:2].argmax(dim=-1).max()) + 1
            _export(_CausalText(model), (tokens[:2, :n],), ["tokens"],
                    [{0: _batch_dim(), 1: torch.export.Dim("length", min=1, max=ctx)}], folder / ONNX_TEXT)
        else:
            _export(_FullText(model), (tokens[:2],), ["tokens"], [{0: _batch_dim()}], folder / ONNX_TEXT)
        from enclip_qdrant.engine.onnx import run_clip_text

        got = run_clip_text(_session(folder / ONNX_TEXT), tokens.numpy(), cut)
        record |= {"text_input": "tokens", "text": {"path": ONNX_TEXT, "sha256": file_sha256(folder / ONNX_TEXT)},
                   "tokenizer": {"path": ONNX_TOKENIZER, "sha256": file_sha256(folder / ONNX_TOKENIZER),
                                 "kind": "clip", "context_length": ctx}, "cut_at_eot": cut}
    record["parity"]["text"] = _check(member.name, "text", member.encode_texts(SAMPLE_TEXTS), got)
    return record


def export_shared_text(member: Member, dest: Path) -> dict[str, Any]:
    """The shared pretrained text encoder of the text-encoder recipe, once per bundle, with its tokenizer."""
    from enclip_qdrant.engine.tokenizers import HFTextTokenizer

    enc = member.encoder  # type: ignore[attr-defined]  # recipes.HeadMember
    dest.mkdir(parents=True, exist_ok=True)
    source = Path(enc.tokenizer.name_or_path) / ONNX_TOKENIZER
    if not source.is_file():
        raise UnsupportedExport(f"text encoder {enc.spec.name}: no {ONNX_TOKENIZER} in {source.parent}")
    shutil.copyfile(source, dest / ONNX_TOKENIZER)
    tok = HFTextTokenizer(dest / ONNX_TOKENIZER, enc.spec.max_length)
    batch = tok(SAMPLE_TEXTS)
    want = enc.tokenizer(SAMPLE_TEXTS, padding=True, truncation=True, max_length=enc.spec.max_length,
                         return_tensors="np")
    if any(not np.array_equal(batch[k], want[k]) for k in ("input_ids", "attention_mask", "token_type_ids")):
        raise UnsupportedExport(f"text encoder {enc.spec.name}: the exported tokenizer gives other ids")
    args = tuple(torch.from_numpy(batch[k][:2]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    length = torch.export.Dim("length", min=1, max=enc.spec.max_length)
    dyn = [{0: _batch_dim(), 1: length}] * 3
    _export(_SentenceEncoder(enc.model), args, ["input_ids", "attention_mask", "token_type_ids"], dyn,
            dest / "model.onnx")
    got = _session(dest / "model.onnx").run(None, {k: batch[k] for k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")})[0]
    ref = enc._forward(list(SAMPLE_TEXTS))
    diff = float(np.abs(ref - got).max())
    if diff > TOLERANCE:
        raise BundleError(f"text encoder {enc.spec.name}: the export differs from torch by {diff:.2e}; not written")
    return {"model": {"path": f"{SHARED_TEXT_DIR}/model.onnx", "sha256": file_sha256(dest / "model.onnx")},
            "tokenizer": {"path": f"{SHARED_TEXT_DIR}/{ONNX_TOKENIZER}",
                          "sha256": file_sha256(dest / ONNX_TOKENIZER)},
            "spec": enc.spec.record(), "parity": diff}


def export_members(path: Path, members: Sequence[Member], fingerprint: str,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Export every member of the bundle at `path`; the manifest's `onnx` section. Raises `UnsupportedExport`
    (nothing usable written) when one member cannot be exported: a bundle runs on one engine."""
    import onnxruntime

    progress = progress or NullProgress()
    task = progress.task("exporting the towers to ONNX", total=len(members))
    shared = None
    out: dict[str, Any] = {}
    for m in members:
        folder = path / "members" / m.name
        rec = export_member(m, folder)
        if rec.get("text_input") == "shared" and shared is None:
            shared = export_shared_text(m, path / SHARED_TEXT_DIR)
        for part in ("image", "text", "tokenizer"):
            if part in rec:
                rec[part]["path"] = f"members/{m.name}/{rec[part]['path']}"
        out[m.name] = rec
        task.advance()
    task.close()
    return {"format": ONNX_FORMAT, "opset": OPSET, "of_fingerprint": fingerprint,
            "exporter": f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
            "members": out, "shared_text": shared}


def export_bundle(path: str | Path, progress: Progress | None = None, force: bool = False) -> dict[str, Any]:
    """`enclip-qdrant export BUNDLE`: add ONNX towers to a trained bundle. The fingerprint then covers them
    (format 3), so it changes: collections indexed before must be re-indexed (said in one line)."""
    from enclip_qdrant.bundle.manifest import FORMAT_VERSION, model_fingerprint, sealed_fingerprint, write_manifest
    from enclip_qdrant.bundle.names import CONFIG_NAME
    from enclip_qdrant.engine.load import load_bundle

    path = Path(path)
    progress = progress or NullProgress()
    with locked(path, timeout=2.0, what=f"the bundle folder {path}"):
        bundle = load_bundle(path, engine="torch", check_onnx=False)  # the towers are what --force rebuilds
        if bundle.manifest.get("onnx") and not force:
            progress.log(f"{path} already has ONNX towers (pass --force to export again)")
            return bundle.manifest["onnx"]
        manifest = json_copy(bundle.manifest)
        for m in manifest["members"]:  # format 1 bundles: their configs join the fingerprint too
            m.setdefault("config_sha256", file_sha256(path / m["path"] / CONFIG_NAME))
        model = model_fingerprint(path, manifest)
        members = bundle.ensemble.members  # type: ignore[attr-defined]
        record = export_members(path, members, model, progress)
        manifest |= {"format_version": FORMAT_VERSION, "onnx": record,
                     "fingerprint": sealed_fingerprint(model, record)}
        write_manifest(path, manifest)
        if manifest["fingerprint"] != bundle.fingerprint:
            progress.log(f"bundle fingerprint {bundle.fingerprint} -> {manifest['fingerprint']} (it now covers the "
                         "ONNX towers): re-index the collections built with this bundle")
        return record
