"""Member encoding: the short-sequence text path must equal open_clip's own encode_text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from enclip_qdrant.engine.torch.members import Ensemble, _encode_by_length, causal_argmax_tower
from enclip_qdrant.training.members import new_member
from enclip_qdrant.training.presets import get_preset

TEXTS = ["red floral dress", "", "a", "men navy blue slim fit checked casual shirt with long sleeves pocket and "
         "a very long title that runs past the context length of the tiny preset", "black leather handbag"] * 3


@pytest.fixture(scope="module")
def member():
    return new_member("m0", get_preset("tiny"), seed=3)


def test_short_path_equals_open_clip_encode_text(member):
    assert causal_argmax_tower(member.model)
    tokens = member.tokenizer(TEXTS)
    assert tokens.argmax(dim=-1).max() == tokens.shape[1] - 1  # one text fills the whole context
    assert tokens.argmax(dim=-1).min() < 3  # and some are far shorter, so chunks really are cut
    with torch.inference_mode():
        ref = member.model.encode_text(tokens, normalize=True)
        for chunk in (1, 4, 128):  # sorted chunks of mixed lengths, put back in the caller's order
            got = _encode_by_length(member.model, tokens, chunk=chunk)
            assert torch.allclose(got, ref, atol=1e-5), chunk


def test_ensemble_tokenizes_once_per_tokenizer(member, monkeypatch):
    other = new_member("m1", get_preset("tiny"), seed=4)
    calls = []
    for m in (member, other):
        real = m.tokenizer
        m.tokenizer = lambda texts, real=real: calls.append(len(texts)) or real(texts)
    out = Ensemble([member, other]).encode_texts(TEXTS)
    assert calls == [len(TEXTS)]
    np.testing.assert_allclose(out["m1"], other.encode_texts(TEXTS), atol=1e-5)
