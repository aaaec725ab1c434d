"""The ONNX engine: a bundle's exported towers on ONNX Runtime, with no torch or open_clip in the process.

`OnnxEnsemble` has the torch `Ensemble`'s interface (`names`, `dims`, `encode_images`, `encode_texts`), so
search, indexing, evaluation and the service use either. Tokenization (`tokenize.py`) and image preprocessing
(`preprocess.py`) reproduce open_clip's ids and pixels exactly (parity tests); the towers were checked against
torch when exported (`onnx_export.py`).

Members run side by side for a query: ONNX Runtime releases the GIL, so a thread pool runs one member per
core; a batch (indexing) runs them one after another, each with every core. Sessions do not spin (spinning
threads of idle sessions would steal the cores the busy ones need). A shared text encoder runs once per
batch, with every core, and each member then applies only its head.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from enclip_qdrant.bundle.names import CONFIG_NAME
from enclip_qdrant.bundle.vectors import concat_rows
from enclip_qdrant.errors import BundleError, first_line
from enclip_qdrant.files import file_sha256, read_json
from enclip_qdrant.system import available_cores

ENGINES = ("auto", "onnx", "torch")
SIDE_BY_SIDE_ROWS = 16  # up to this many rows, members run concurrently (one per core); beyond, one by one


def _session(path: Path, threads: int, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), so, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types, with multi-line texts
        raise BundleError(f"cannot load the ONNX model {path}: {first_line(e)[:200]}") from None


def run_clip_text(session: Any, tokens: np.ndarray, cut_at_eot: bool, chunk: int = 128) -> np.ndarray:
    """Unit vectors of open_clip token ids; with a causal tower, each chunk (sorted by length) is cut after
    its longest text's EOT token (the highest id), as `members._encode_by_length` does in torch."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if not len(tokens):
        return np.zeros((0, session.get_outputs()[0].shape[-1]), dtype=np.float32)
    if not cut_at_eot:
        return np.concatenate([session.run(None, {"tokens": tokens[s:s + chunk]})[0]
                               for s in range(0, len(tokens), chunk)])
    eot = tokens.argmax(axis=-1)
    order = np.argsort(eot, kind="stable")
    parts = []
    for s in range(0, len(tokens), chunk):
        idx = order[s:s + chunk]
        n = int(eot[idx].max()) + 1
        parts.append(session.run(None, {"tokens": np.ascontiguousarray(tokens[idx, :n])})[0])
    out = np.concatenate(parts)
    return out[np.argsort(order, kind="stable")]


@dataclass
class _OnnxMember:
    name: str
    dim: int
    image: Any  # onnxruntime.InferenceSession (set once loaded)
    text: Any
    text_input: str  # "tokens" (open_clip ids) or "shared" (the shared encoder's vectors)
    preprocess_cfg: dict[str, Any]
    tokenizer_key: str = ""
    cut_at_eot: bool = False

    @property
    def preprocess_key(self) -> str:
        return json.dumps(self.preprocess_cfg, sort_keys=True)


class _SharedText:
    """The exported shared sentence encoder (text-encoder recipe) with its tokenizer."""

    def __init__(self, model: Path, tokenizer: Path, max_length: int, dim: int, threads: int,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        from enclip_qdrant.engine.tokenizers import HFTextTokenizer

        self.dim = dim
        self.tokenizer = HFTextTokenizer(tokenizer, max_length)
        self.session = _session(model, threads, providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.calls = 0  # forward passes (tests prove a text query runs the encoder once for all members)

    def encode(self, texts: Sequence[str], chunk: int = 256) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding per chunk
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(order), chunk):
            idx = order[s:s + chunk]
            batch = self.tokenizer([texts[i] for i in idx])
            self.calls += 1
            out[idx] = self.session.run(None, {k: batch[k] for k in self.inputs})[0]
        return out


class OnnxEnsemble:
    """The members on ONNX Runtime: the same interface as `members.Ensemble`."""

    engine = "onnx"

    def __init__(self, path: Path, manifest: Mapping[str, Any], folders: Sequence[Path], *, verify: bool = True,
                 threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)):
        from enclip_qdrant.engine.tokenizers import ClipTokenizer

        record = manifest.get("onnx")
        if not isinstance(record, dict) or not isinstance(record.get("members"), dict):
            raise BundleError(f"{path} has no ONNX towers: run `enclip-qdrant export {path}` (or use --engine torch)")
        from enclip_qdrant.bundle.manifest import sealed

        if not sealed(manifest):
            raise BundleError(f"{path} is a format {manifest.get('format_version', 0)} bundle: its fingerprint does "
                              "not cover its ONNX towers, so a changed tower could pass; run `enclip-qdrant export "
                              f"{path} --force` to seal them (a new fingerprint: re-index its collections), or use "
                              "--engine torch")
        cores = threads or available_cores()
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        n = len(manifest["members"])
        self.workers = max(1, min(n, cores))
        per = cores  # each session may use every core: a big batch runs the members one after another
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="enclip-onnx") if self.workers > 1 else None
        self.members: list[_OnnxMember] = []
        self._tokenizers: dict[str, Callable[[Sequence[str]], np.ndarray]] = {}
        self.shared: _SharedText | None = None
        # 1. read the records (cheap), 2. check every file's sha256, 3. load: steps 2 and 3 run on a thread
        # pool (hashing and building sessions release the GIL), which halves a cold query's start on 2 cores
        files: list[tuple[Path, str, str]] = []  # path, recorded sha256, what it is

        def need(rec: Any, what: str) -> Path:
            p = _path(path, rec, what)
            files.append((p, rec["sha256"], what))
            return p

        loads: list[tuple[_OnnxMember, str, Path]] = []
        tokenizers: dict[str, tuple[Path, int]] = {}
        shared: tuple[Path, Path, int, int] | None = None
        for m, folder in zip(manifest["members"], folders, strict=True):
            rec = record["members"].get(m["vector"])
            if not isinstance(rec, dict):
                raise BundleError(f"{path}: member {m['name']!r} has no ONNX towers; run `enclip-qdrant export "
                                  f"{path} --force`")
            config = read_json(folder / CONFIG_NAME)
            if not isinstance(config, dict) or not isinstance(config.get("preprocess_cfg"), dict):
                raise BundleError(f"member {m['name']!r}: {folder / CONFIG_NAME} is corrupt")
            om = _OnnxMember(m["vector"], int(m["dim"]), None, None, str(rec.get("text_input")),
                             config["preprocess_cfg"])
            loads.append((om, "image", need(rec.get("image"), f"member {m['name']!r} image tower")))
            loads.append((om, "text", need(rec.get("text"), f"member {m['name']!r} text tower")))
            if om.text_input == "tokens":
                tok = rec.get("tokenizer") or {}
                tok_path = need(tok, f"member {m['name']!r} tokenizer")
                om.tokenizer_key = f"{tok.get('sha256')}/{tok.get('context_length')}"
                om.cut_at_eot = bool(rec.get("cut_at_eot"))
                tokenizers.setdefault(om.tokenizer_key, (tok_path, int(tok.get("context_length") or 0)))
            elif om.text_input == "shared":
                if shared is None:
                    shared = self._shared_files(path, record.get("shared_text"), manifest, need)
            else:
                raise BundleError(f"{path}: member {m['name']!r} has an unknown ONNX text input {om.text_input!r}")
            self.members.append(om)
        with ThreadPoolExecutor(cores, thread_name_prefix="enclip-load") as pool:
            if verify:
                for (p, want, what), got in zip(files, pool.map(lambda f: file_sha256(f[0]), files), strict=True):
                    if got != want:
                        raise BundleError(f"{path}: {what} ({p.relative_to(path)}) does not match the manifest "
                                          "(file changed?); refusing to load it")
            jobs = [pool.submit(_session, p, per, providers) for _, _, p in loads]
            tok_jobs = {k: pool.submit(ClipTokenizer, p, n) for k, (p, n) in tokenizers.items()}
            shared_job = pool.submit(_SharedText, *shared, cores, providers) if shared else None
            for (om, part, _), job in zip(loads, jobs, strict=True):
                setattr(om, part, job.result())
            self._tokenizers = {k: j.result() for k, j in tok_jobs.items()}
            self.shared = shared_job.result() if shared_job else None
        # every text head runs over the shared encoder's vectors: encode_texts runs them inline (see there)
        self._heads_only = all(m.text_input == "shared" for m in self.members)

    @staticmethod
    def _shared_files(path: Path, rec: Any, manifest: Mapping[str, Any],
                      need: Callable[[Any, str], Path]) -> tuple[Path, Path, int, int]:
        from enclip_qdrant.engine.text_encoders import check_record

        if not isinstance(rec, dict):
            raise BundleError(f"{path}: its ONNX members need the shared text encoder, which was not exported")
        spec = check_record(rec.get("spec") or {}, f"{path} (ONNX text encoder)")
        if manifest.get("text_encoder") and manifest["text_encoder"] != spec.record():
            raise BundleError(f"{path}: the ONNX text encoder is not the one the members were trained with")
        return need(rec.get("model"), "the shared text encoder"), \
            need(rec.get("tokenizer"), "the shared text encoder's tokenizer"), spec.max_length, spec.dim

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def dims(self) -> dict[str, int]:
        return {m.name: m.dim for m in self.members}

    def _each(self, fn: Callable[[_OnnxMember], np.ndarray], rows: int) -> list[np.ndarray]:
        """fn for every member: side by side for a few rows (a query: each member's pass is too small to use
        two cores), one after another with every core for a batch (bench/engines.py, 5 default members: 202 vs 181
        images/s embedding 2,000 images)."""
        if self._pool is None or rows > SIDE_BY_SIDE_ROWS:
            return [fn(m) for m in self.members]
        return list(self._pool.map(fn, self.members))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 256) -> dict[str, np.ndarray]:
        from enclip_qdrant.engine.preprocess import preprocess_images

        out: dict[str, list[np.ndarray]] = {m.name: [] for m in self.members}
        for start in range(0, len(images), batch_size):
            chunk = [im.convert("RGB") for im in images[start:start + batch_size]]
            pixels: dict[str, np.ndarray] = {}
            for m in self.members:
                if m.preprocess_key not in pixels:
                    pixels[m.preprocess_key] = preprocess_images(chunk, m.preprocess_cfg)
            vecs = self._each(lambda m, px=pixels: m.image.run(None, {"pixels": px[m.preprocess_key]})[0], len(chunk))
            for m, v in zip(self.members, vecs, strict=True):
                out[m.name].append(v)
        return {k: concat_rows(v, self.dims[k]) for k, v in out.items()}

    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {m.name: [] for m in self.members}
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            tokens = {key: tok(chunk) for key, tok in self._tokenizers.items()}
            feats = self.shared.encode(chunk) if self.shared is not None else None

            def one(m: _OnnxMember, tokens: dict[str, np.ndarray] = tokens, feats: Any = feats) -> np.ndarray:
                if m.text_input == "shared":
                    return m.text.run(None, {"sentence_vector": feats})[0]
                return run_clip_text(m.text, tokens[m.tokenizer_key], m.cut_at_eot)

            # Heads over the shared encoder's vectors are one small matmul each: inline, a thread hand-off
            # would cost more than the head. Members with their own text towers run side by side.
            vecs = [one(m) for m in self.members] if self._heads_only else self._each(one, len(chunk))
            for m, v in zip(self.members, vecs, strict=True):
                out[m.name].append(v)
        return {k: concat_rows(v, self.dims[k]) for k, v in out.items()}


def _path(root: Path, rec: Any, what: str) -> Path:
    """A file the `onnx` section names: recorded with a sha256, inside the bundle, present."""
    from enclip_qdrant.bundle.manifest import inside

    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str) or not isinstance(rec.get("sha256"), str):
        raise BundleError(f"{root}: the manifest's record of {what} is malformed")
    path = inside(root, rec["path"], what)
    if not path.is_file():
        raise BundleError(f"{root}: {what} ({rec['path']}) is missing; run `enclip-qdrant export {root} --force`")
    return path


def choose_engine(manifest: Mapping[str, Any], engine: str) -> str:
    """`auto`: ONNX when the bundle has ONNX towers its fingerprint covers (format 3) and onnxruntime is
    installed, else torch (an older bundle's towers are sealed by `export --force`)."""
    if engine not in ENGINES:
        raise BundleError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    from importlib.util import find_spec

    from enclip_qdrant.bundle.manifest import sealed

    if not manifest.get("onnx") or find_spec("onnxruntime") is None:
        return "torch"
    return "onnx" if sealed(manifest) or find_spec("torch") is None else "torch"
