"""KVManager and Scheduler invariants, checked directly and at every step of a live engine.

reserved >= 0 and == the running requests' budgets; the pool never promises more than it has; every
block comes back after a finish, a cancel or an engine failure.
"""

import pytest
import torch

from gpt3lab.config import ModelConfig
from gpt3lab.generate.api import EventStream, SamplingParams
from gpt3lab.generate.engine import Engine
from gpt3lab.generate.kv_manager import KVManager
from gpt3lab.generate.paged_cache import BlockPool
from gpt3lab.generate.scheduler import Request, Scheduler, Seq

from gen_helpers import BYTES, tiny, wait_idle

CFG = ModelConfig(vocab_size=50, context=32, n_layer=2, n_head=2, d_model=16)


def _kv(num_blocks=16, cfg=CFG):
    return KVManager(BlockPool(cfg, num_blocks, block_size=4), cfg, max_batch_tokens=8)


def _req(prompt, max_tokens=4, n=1):
    return Request(EventStream("r"), list(prompt), SamplingParams(max_tokens=max_tokens, n=n), n)


def _start(kv, req):
    got = kv.reserve(req)
    if got is None:
        return None
    P, tables, hashes = got
    s = Seq(req, 0, list(req.prompt), tables, torch.Generator(), computed=P, hashes=hashes)
    req.seqs.append(s)
    return s


def test_reservation_covers_the_worst_case_and_refuses_what_does_not_fit():
    kv = _kv(num_blocks=10)
    a = _req(range(1, 9), max_tokens=8)                  # 16 tokens = 4 blocks x 2 layers
    assert kv.blocks_needed(a) == 8
    s = _start(kv, a)
    assert kv.reserved == 8 and a.budget == 8
    assert _start(kv, _req(range(1, 5), max_tokens=4)) is None     # needs 4, only 2 unpromised
    kv.ensure_blocks(s, 8)                               # prompt: 2 blocks per layer taken from the budget
    assert a.budget == 4 and kv.reserved == 4 and kv.pool.used() == 4
    kv.release_request(a)
    assert kv.reserved == 0 and a.budget == 0 and kv.pool.used() == 0


def test_a_cached_prefix_is_shared_and_not_reserved_twice():
    kv = _kv()
    a = _req(range(1, 11), max_tokens=2)
    s = _start(kv, a)
    kv.ensure_blocks(s, 10)
    s.computed = 10
    kv.register_blocks(s)                                # blocks 0..1 of each layer are full
    b = _req(list(range(1, 9)) + [40, 41], max_tokens=2)
    t = _start(kv, b)
    assert t.computed == 8 and [len(x) for x in t.tables] == [2, 2]
    assert t.tables == [x[:2] for x in s.tables]
    assert b.budget == kv.blocks_needed(b) - 4
    assert kv.reserved == a.budget + b.budget
    kv.release_request(a)
    assert kv.pool.used() == 4                           # b still holds the shared prefix
    kv.release_request(b)
    assert kv.pool.used() == 0 and kv.reserved == 0


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    kv = _kv()
    a = _req(range(1, 7), max_tokens=2, n=2)
    s = _start(kv, a)
    kv.ensure_blocks(s, 6)
    shared = [kv.share(a, t, 6) for t in s.tables]
    assert [x[0] for x in shared] == [x[0] for x in s.tables]          # full block: same id
    assert all(x[1] != y[1] for x, y in zip(shared, s.tables))         # partial block: a copy
    assert all(kv.pool.ref[t[0]] == 2 for t in s.tables)
    a.seqs.append(Seq(a, 1, list(a.prompt), shared, torch.Generator()))
    kv.release_request(a)
    assert kv.pool.used() == 0 and kv.reserved == 0


def test_admission_keeps_arrival_order_and_max_running():
    kv = _kv(num_blocks=64)
    sch = Scheduler(kv, max_running=2, max_batch_tokens=8)
    reqs = [_req([i + 1] * 3) for i in range(3)]
    sch.waiting.extend(reqs)
    sch.admit(lambda r: _start(kv, r) is not None)
    assert sch.running == reqs[:2] and list(sch.waiting) == reqs[2:]
    batch = sch.next_batch()                             # two prompts of 3 tokens within 8
    assert [c for _, c in batch.plan] == [3, 3] and batch.rows == [2, 5]


def _check_invariants(engine):
    kv, sch = engine.kv, engine.scheduler
    assert kv.reserved >= 0
    assert kv.reserved == sum(r.budget for r in sch.running)
    assert engine.pool.available() >= kv.reserved


@pytest.mark.parametrize("pattern", ["dense", "alternating"])
def test_invariants_hold_at_every_step_and_every_block_comes_back(pattern):
    checks = []

    def hook(engine):
        _check_invariants(engine)
        checks.append(1)
    e = Engine(tiny(pattern), BYTES, block_size=4, max_batch_tokens=16, kv_memory_bytes=96 * 2 * 2 * 4 * 16 * 4,
               on_step=hook)
    try:
        hs = [e.submit(BYTES.encode(p), SamplingParams(max_tokens=12, n=1 + i % 3, seed=i, temperature=1.0))
              for i, p in enumerate(["To be, or not", "To be, or not to", "a", "The quick brown fox", "xyz"] * 2)]
        next(iter(hs[3]))
        hs[3].cancel()
        for h in hs:
            list(h)
        wait_idle(e)
        assert checks and e.kv.reserved == 0 and e.pool.used() == 0
    finally:
        e.shutdown(cancel_running=True)


def test_every_block_comes_back_after_an_engine_failure():
    calls = []

    def hook(engine):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
    e = Engine(tiny(), BYTES, block_size=4, max_batch_tokens=8, on_step=hook)
    try:
        hs = [e.submit(BYTES.encode(p), SamplingParams(max_tokens=20)) for p in ["Hello there", "abc", "xyzw"]]
        for h in hs:
            try:
                list(h)
            except Exception:
                pass
        wait_idle(e)
        assert e.kv.reserved == 0 and e.pool.used() == 0 and not e.scheduler.running
    finally:
        e.shutdown(cancel_running=True)
