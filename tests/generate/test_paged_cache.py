"""Block pool: refcounts, prefix-cache registration/lookup, LRU eviction order; PagedStep vs a plain forward."""
import torch

from gpt3lab.config import ModelConfig
from gpt3lab.generate.paged_cache import BlockPool, PagedStep, Segment, prefix_hashes
from gpt3lab.model import GPT

CFG = ModelConfig(vocab_size=50, context=32, n_layer=2, n_head=2, d_model=16)


def test_prefix_hashes_identify_the_whole_prefix():
    a = prefix_hashes(list(range(10)), 4)
    b = prefix_hashes(list(range(10)) + [7, 7], 4)
    c = prefix_hashes([99] + list(range(1, 10)), 4)
    assert len(a) == 2 and a == b[:2] and len(b) == 3
    assert all(x != y for x, y in zip(a, c))         # a different first token changes every later hash


def test_release_caches_registered_blocks_and_evicts_least_recently_released():
    pool = BlockPool(CFG, num_blocks=3, block_size=4)
    blocks = [pool.allocate() for _ in range(3)]
    assert pool.available() == 0 and sorted(blocks) == [0, 1, 2]
    for i, b in enumerate(blocks[:2]):
        pool.register(b, bytes([i]), layer=0)
    pool.release(blocks[1])                           # cached (registered): evictable, still findable
    pool.release(blocks[0])
    pool.release(blocks[2])                           # unregistered: plain free
    assert pool.available() == 3 and pool.used() == 0
    assert pool.lookup(bytes([0]), 0) == blocks[0] and pool.lookup(bytes([0]), 1) is None
    assert pool.allocate() == blocks[2]               # free blocks go first
    assert pool.allocate() == blocks[1]               # then the least recently released cached one
    assert pool.lookup(bytes([1]), 0) is None         # evicted: no longer findable
    pool.acquire(blocks[0])                           # a hit takes it out of the LRU
    assert pool.available() == 0 and pool.ref[blocks[0]] == 1


def test_register_keeps_the_first_block_under_a_hash_and_can_be_disabled():
    pool = BlockPool(CFG, num_blocks=4, block_size=4)
    b1, b2 = pool.allocate(), pool.allocate()
    pool.register(b1, b"h", 0)
    pool.register(b2, b"h", 0)
    assert pool.lookup(b"h", 0) == b1
    off = BlockPool(CFG, num_blocks=4, block_size=4, enable_prefix_caching=False)
    off.register(off.allocate(), b"h", 0)
    assert off.lookup(b"h", 0) is None


def _packed_logits(model, pool, seqs: list[list[int]], chunk: int) -> list[torch.Tensor]:
    """Run several sequences through PagedStep (prefill in chunks, all packed in each step)."""
    tables = [[[] for _ in range(CFG.n_layer)] for _ in seqs]
    done = [0] * len(seqs)
    out = [[] for _ in seqs]
    while any(d < len(s) for d, s in zip(done, seqs)):
        segs, ids, who = [], [], []
        for i, s in enumerate(seqs):
            c = min(chunk, len(s) - done[i])
            if c:
                for t in tables[i]:
                    while len(t) * pool.block_size < done[i] + c:
                        t.append(pool.allocate())
                segs.append(Segment(tables[i], done[i], c))
                ids += s[done[i]:done[i] + c]
                who.append((i, c))
        # PagedStep wants decode (length-1) segments first
        order = sorted(range(len(segs)), key=lambda k: segs[k].length != 1)
        segs, who = [segs[k] for k in order], [who[k] for k in order]
        ids = [t for i, c in who for t in seqs[i][done[i]:done[i] + c]]
        step = PagedStep(pool, segs)
        logits, _ = model(torch.tensor([ids]), cache=step)                      # (1, N, V)
        at = 0
        for i, c in who:
            out[i].append(logits[0, at:at + c])
            at += c
            done[i] += c
    return [torch.cat(o) for o in out]


def test_paged_step_matches_a_plain_forward_for_packed_sequences():
    for pattern in ("dense", "alternating"):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=50, context=32, n_layer=2, n_head=2, d_model=16, attention_pattern=pattern,
                          local_window=3)
        model = GPT(cfg).eval()
        pool = BlockPool(cfg, num_blocks=64, block_size=4)
        seqs = [list(range(1, 20)), [5, 6], list(range(30, 41))]
        with torch.no_grad():
            got = _packed_logits(model, pool, seqs, chunk=5)
            for s, g in zip(seqs, got):
                want = model(torch.tensor([s]))[0][0]
                assert torch.allclose(g, want, atol=1e-5), pattern
