"""KV-cached decoding equals full recomputation, for dense, alternating and banded models."""
import pytest
import torch

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT, ContextOverflowError, KVCache
from gpt3lab.model.kv_cache import cache_bytes


def _model(pattern, W=8, context=64):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, context=context, n_layer=4, n_head=2, d_model=32,
                      attention_pattern=pattern, local_window=W)
    return GPT(cfg).eval()


def _incremental(model, ids, chunks):
    """Feed ids through the cache in the given chunk sizes; return all logits (B, T, V)."""
    cache = KVCache(model.config, batch_size=ids.shape[0])
    out, p = [], 0
    with torch.no_grad():
        for n in chunks:
            logits, _ = model(ids[:, p:p + n], cache=cache)
            out.append(logits)
            p += n
    assert cache.pos == ids.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("pattern", ["dense", "alternating", "banded"])
@pytest.mark.parametrize("chunks", [[1] * 30, [12] + [1] * 18, [5, 7, 3, 9, 1, 1, 4], [30]])
def test_cached_equals_full_recompute(pattern, chunks):
    # 30 tokens > window 8: banded layers' ring buffers wrap several times
    model = _model(pattern)
    ids = torch.randint(0, 97, (2, sum(chunks)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(ids)
    torch.testing.assert_close(_incremental(model, ids, chunks), full, atol=1e-5, rtol=1e-4)


def test_last_only_equals_last_row():
    model = _model("alternating")
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(ids)
        last, _ = model(ids, last_only=True)
    assert last.shape == (1, 1, 97)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_banded_cache_memory_is_capped_by_window():
    cfg = _model("banded", W=8).config
    cache = KVCache(cfg, batch_size=1, max_len=64)
    assert all(k.shape[2] == 8 for k in cache.k)
    assert cache.nbytes() == cache_bytes(cfg, 1, 64, bytes_per_el=4)


def test_context_overflow_raises():
    model = _model("dense", context=16)
    with pytest.raises(ContextOverflowError, match="exceeds the model's context of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = KVCache(model.config, batch_size=1)
    with torch.no_grad():
        model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
        with pytest.raises(ContextOverflowError, match="10 cached \\+ 7 new tokens"):
            model(torch.zeros(1, 7, dtype=torch.long), cache=cache)
