"""A new attention variant touches attention_spec and its tests only: a test-only spec (a query sees only
itself, written with its own rule) installed on some layers is honoured by the full forward pass, the
contiguous cache, the paged cache and the KV manager (through the engine and generate()), and inspect."""
import pytest
import torch

from gpt3lab.attention_spec import AttentionSpec, Banded
from gpt3lab.generate import generate
from gpt3lab.generate.core import model_specs
from gpt3lab.generate.engine import Engine
from gpt3lab.generate.kv_manager import KVManager
from gpt3lab.generate.paged_cache import BlockPool
from gpt3lab.generate.api import SamplingParams
from gpt3lab.inspect import inspect
from gpt3lab.model.kv_cache import KVCache

import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parents[1] / "generate"))
from gen_helpers import BYTES, tiny  # noqa: E402


class SelfOnly(AttentionSpec):
    """Test-only variant: each query sees its own key and nothing else (a window of one, own rule)."""

    window = 1

    def allowed(self, q, k):
        return k == q


@pytest.fixture
def model():
    m = tiny("dense", seed=2, context=48, n_layer=4)
    for layer in (1, 3):
        m.transformer.h[layer].attn.spec = SelfOnly()
    return m


def full_greedy(model, ids, steps):
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([ids + out]))
            out.append(int(logits[0, -1].argmax()))
    return out


def test_the_variant_is_what_the_model_computes(model):
    ids = torch.tensor([list(b"hello world")])
    with torch.no_grad():
        got, _ = model(ids)
        for layer in (1, 3):           # Banded(1) is the same rule written as a band
            model.transformer.h[layer].attn.spec = Banded(1)
        want, _ = model(ids)
    assert torch.allclose(got, want, atol=1e-5)


def test_the_contiguous_cache_honours_it(model):
    ids = list(b"a variant of attention")
    with torch.no_grad():
        full, _ = model(torch.tensor([ids]))
        cache = KVCache(model.config, 1, specs=model_specs(model))
        assert [k.shape[2] for k in cache.k] == [48, 1, 48, 1]        # a ring of one key on those layers
        parts = [model(torch.tensor([ids[i:i + 5]]), cache=cache)[0] for i in range(0, len(ids), 5)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_generate_the_engine_and_the_kv_manager_honour_it(model):
    prompt = list(b"once upon a time")
    want = full_greedy(model, prompt, 20)
    assert generate(model, BYTES, prompt, max_tokens=20, temperature=0).tokens == want
    e = Engine(model, BYTES, kv_memory_bytes=4 << 20, block_size=4, max_batch_tokens=8)
    try:
        kv = e.kv
        assert kv.blocks_per_seq(36) < 4 * 9                   # the variant's layers hold only a few blocks
        toks = [t for ev in e.submit(prompt, SamplingParams(max_tokens=20, temperature=0)) for t in ev.tokens]
        assert toks == want
    finally:
        e.shutdown()
    pool = BlockPool(model.config, 64, 4)
    assert KVManager(pool, model.config, 8, specs=model_specs(model)).first_block(1, 20) == 5


def test_inspect_draws_it(model):
    info = inspect(model, BYTES, "look inside", layers=[0, 1])
    w0, w1 = info["attention"]["weights"]
    assert info["attention"]["windows"] == [None, 1]
    for head in w1:
        for i, row in enumerate(head):
            assert row[i] == pytest.approx(1.0) and sum(row[:i]) == pytest.approx(0.0)
    assert any(row[0] > 0 for head in w0 for row in head[1:])   # the dense layer looks back
