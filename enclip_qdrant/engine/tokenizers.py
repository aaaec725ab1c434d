"""Tokenizers for the torch-free query path: the same token ids as open_clip and transformers, without them.

Imports only numpy, `tokenizers` and open_clip's pure-python text cleaners (ftfy, html, regex); never torch,
open_clip or transformers.

* `ClipTokenizer` gives exactly `open_clip.SimpleTokenizer(context_length=n)(texts).numpy()`. The text is cleaned
  with open_clip's own code ('lower': ftfy, html unescape twice, whitespace collapse, lower case) and split into
  words with open_clip's own regex (same pattern, same `regex` module, IGNORECASE): those steps are copied, not
  re-expressed, so they agree on any input. Only the BPE of each word runs in `tokenizers`, from the
  tokenizer.json that `write_clip_tokenizer` builds from open_clip's bundled vocabulary (same vocab, ranks and
  "</w>" end-of-word rule). Truncation keeps EOT as the last token; padding is 0, as in open_clip.
* `HFTextTokenizer` gives exactly what the shared MiniLM text encoder's `AutoTokenizer(texts, padding=True,
  truncation=True, max_length=n)` gives, from that model's own tokenizer.json.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np
import regex
from tokenizers import Tokenizer, pre_tokenizers

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# open_clip.tokenizer.SimpleTokenizer.pat (special tokens first, compiled with IGNORECASE)
WORD_PATTERN = SOT_TOKEN + "|" + EOT_TOKEN + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WORDS = regex.compile(WORD_PATTERN, regex.IGNORECASE)
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe_path() -> Path:
    """open_clip's bundled BPE file, found without importing open_clip (which would import torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed: its BPE vocabulary is needed to write the tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary {path} is missing")
    return path


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    # open_clip.tokenizer.bytes_to_unicode (GPT-2's table: the one tokenizers' ByteLevel uses)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocab_and_merges(bpe_path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip SimpleTokenizer's `encoder` and ranked merges, built exactly as its __init__ does."""
    with gzip.open(bpe_path or clip_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [SOT_TOKEN, EOT_TOKEN]
    return dict(zip(vocab, range(len(vocab)), strict=True)), [(a, b) for a, b in merges]


def write_clip_tokenizer(path: Path, bpe_path: Path | None = None) -> None:
    """Write a `tokenizers` tokenizer.json with open_clip SimpleTokenizer's BPE (vocab, merges, "</w>").

    Used by `ClipTokenizer`, which cleans and splits text itself. On its own (Tokenizer.from_file(...).encode
    of an already cleaned text) it also applies CLIP's word regex and adds SOT/EOT, but Rust's regex engine
    is not Python's `regex`, so only `ClipTokenizer` promises open_clip's ids."""
    from tokenizers import AddedToken, Regex, decoders, models, processors

    from enclip_qdrant.files import atomic_write_text  # export time only

    vocab, merges = clip_vocab_and_merges(bpe_path)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="</w>", fuse_unk=False, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("(?i)" + WORD_PATTERN.split("|", 2)[2]), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # open_clip maps these words to their ids, unsplit (they are in its BPE cache)
    tok.add_special_tokens([AddedToken(SOT_TOKEN, special=True, normalized=False),
                            AddedToken(EOT_TOKEN, special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}", special_tokens=[(SOT_TOKEN, vocab[SOT_TOKEN]),
                                                              (EOT_TOKEN, vocab[EOT_TOKEN])])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tok.to_str())


def clean_lower(text: str) -> str:
    """open_clip's 'lower' cleaning (`_clean_lower`: basic_clean, whitespace_clean, lower), copied."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = " ".join(text.split())
    text = text.strip()
    return text.lower()


class ClipTokenizer:
    """open_clip's SimpleTokenizer ('lower' cleaning, no reduction mask) from a `write_clip_tokenizer` file."""

    def __init__(self, tokenizer_json: Path, context_length: int):
        if int(context_length) < 2:
            raise ValueError(f"context_length must be at least 2, not {context_length}")
        self.context_length = int(context_length)
        tok = Tokenizer.from_file(str(tokenizer_json))
        # words come pre-split by open_clip's regex: the BPE only needs their bytes mapped to BPE symbols
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        sot, eot = tok.token_to_id(SOT_TOKEN), tok.token_to_id(EOT_TOKEN)
        if sot is None or eot is None:
            raise ValueError(f"{tokenizer_json} is not a CLIP tokenizer (no {SOT_TOKEN}/{EOT_TOKEN})")
        self.sot_token_id, self.eot_token_id = sot, eot
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def words(self, text: str) -> list[str]:
        return _WORDS.findall(clean_lower(text))

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without SOT/EOT (open_clip's `SimpleTokenizer.encode`)."""
        return self._encode_words([self.words(text)])[0]

    def _encode_words(self, batch: list[list[str]]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in batch]
        todo = [i for i, words in enumerate(batch) if words]
        if todo:
            encs = self._tok.encode_batch([batch[i] for i in todo], is_pretokenized=True, add_special_tokens=False)
            for i, enc in zip(todo, encs, strict=True):
                out[i] = enc.ids
        return out

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """int64 (N, context_length): [SOT] + ids + [EOT], cut to context_length with EOT last, 0-padded."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = self.context_length
        result = np.zeros((len(texts), ctx), dtype=np.int64)
        for i, ids in enumerate(self._encode_words([self.words(t) for t in texts])):
            tokens = [self.sot_token_id, *ids[:ctx - 2], self.eot_token_id]
            result[i, :len(tokens)] = tokens
        return result


class HFTextTokenizer:
    """A Hugging Face tokenizer.json called like `AutoTokenizer(...)(texts, padding=True, truncation=True,
    max_length=max_length)`: right truncation to max_length (special tokens included), right padding to the
    longest text of the batch. `tokenizer_json` is the file or the model folder holding it."""

    def __init__(self, tokenizer_json: Path, max_length: int):
        path = Path(tokenizer_json)
        path = path / "tokenizer.json" if path.is_dir() else path
        tok = Tokenizer.from_file(str(path))
        pad = tok.padding or {}  # the file's own padding (pad id/token/type), if it records one
        pad_token = pad.get("pad_token", "[PAD]")
        pad_id = pad.get("pad_id", tok.token_to_id(pad_token))
        if pad_id is None:
            raise ValueError(f"{path}: no padding token ({pad_token!r} is not in the vocabulary)")
        self.max_length = int(max_length)
        tok.enable_truncation(max_length=self.max_length, stride=0, strategy="longest_first", direction="right")
        tok.enable_padding(direction="right", pad_id=pad_id, pad_type_id=pad.get("pad_type_id", 0),
                           pad_token=pad_token, length=None, pad_to_multiple_of=None)
        self._tok = tok

    def __call__(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
        """input_ids, attention_mask, token_type_ids: int64 (N, longest)."""
        if isinstance(texts, str):
            texts = [texts]
        encs = self._tok.encode_batch(list(texts), add_special_tokens=True)
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64).reshape(len(encs), -1),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64).reshape(len(encs), -1),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64).reshape(len(encs), -1),
        }
