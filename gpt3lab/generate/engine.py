"""The inference engine: continuous batching over a paged KV cache with prefix caching.

    engine = Engine(model, tokenizer)                       # starts the scheduler thread
    h = engine.submit(tokenizer.encode("Hello"), SamplingParams(max_tokens=20, temperature=0))
    text = "".join(ev.text for ev in h)                     # or `async for ev in h`
    engine.shutdown()

One background thread runs the scheduler loop. Each iteration it takes in new requests and
cancellations, admits waiting requests whose worst-case KV blocks fit the pool (so decoding never
runs out of memory), then runs ONE forward pass over a packed batch: one new token for every
decoding sequence plus chunks of prompts being prefilled, within `max_batch_tokens`. All rows share
each layer's weight reads (one matmul per layer); attention runs per sequence over its blocks.

A request with n (or best_of) choices prefills its prompt once; when the prompt is done the choices
fork (full blocks shared by reference, the partial last block copied) and decode as separate rows.
"""
from __future__ import annotations

import collections
import itertools
import threading
from dataclasses import dataclass, field

import torch

from gpt3lab.generate.api import (ContextLengthError, EngineClosedError, EngineInternalError, EventStream,
                                  InvalidRequestError, QueueFullError, SamplingParams, TokenEvent)
from gpt3lab.generate.paged_cache import BlockPool, PagedStep, Segment, block_hash, prefix_hashes
from gpt3lab.generate.sampling import (apply_logit_bias, apply_penalties, draw, sample_generator, top_k_filter,
                                       top_p_filter, uniforms)
from gpt3lab.generate.text import TextStream
from gpt3lab.model.quant import prepare_for_inference

class EngineHandle(EventStream):
    """A request's event stream: the scheduler thread puts events, readers block or await on them."""

    def __init__(self, request_id: str, engine: "Engine"):
        super().__init__(request_id)
        self._engine = engine

    def cancel(self) -> None:
        """Stop generating; the scheduler frees the request's KV blocks before its next step."""
        self._engine._cancel(self)


@dataclass
class _Seq:
    """One choice being generated: its tokens, its block tables and its text/logprob bookkeeping."""

    req: "_Request"
    index: int
    tokens: list[int]
    tables: list[list[int]]
    generator: torch.Generator
    computed: int = 0                     # tokens whose k, v are in the cache
    hashes: list[bytes] = field(default_factory=list)     # hashes of its full, registered blocks
    out: list[int] = field(default_factory=list)          # generated tokens (stop token excluded)
    counts: collections.Counter = field(default_factory=collections.Counter)
    stream: TextStream | None = None
    offset: int = 0                       # characters of text so far (echo included)
    score: float = 0.0                    # total logprob of the generated tokens (best_of)
    events: list[TokenEvent] = field(default_factory=list)  # held back when best_of > n
    finished: bool = False

    @property
    def pending(self) -> int:
        return len(self.tokens) - self.computed


@dataclass
class _Request:
    handle: EngineHandle
    prompt: list[int]
    params: SamplingParams
    best_of: int
    seqs: list[_Seq] = field(default_factory=list)
    budget: int = 0                       # KV blocks reserved for it and not yet taken
    echo_lp: list = field(default_factory=list)     # prompt token logprobs (echo)
    echo_top: list = field(default_factory=list)
    forked: bool = False


@dataclass
class EngineConfig:
    """Engine knobs. kv_memory_bytes is the KV cache budget (blocks = budget // bytes per block)."""

    block_size: int = 16
    kv_memory_bytes: int = 1 << 30
    max_batch_tokens: int = 512           # tokens per forward pass (decode rows + prefill chunks)
    max_running: int = 64                 # sequences decoding at once
    max_waiting: int = 1024               # requests queued before QueueFullError
    enable_prefix_caching: bool = True


class Engine:
    """Continuous-batching engine over `model` (a gpt3lab GPT); implements api.EngineLike."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, **overrides):
        self.cfg = cfg = config or EngineConfig(**overrides)
        self.model = model.eval()
        prepare_for_inference(self.model)  # its layout/quantization now, never while other threads read it
        self.tokenizer = tokenizer
        self.mcfg = model.config
        self.context = model.config.context
        w = model.transformer.wte.weight
        per_block = BlockPool.bytes_per_block(self.mcfg, cfg.block_size, w.dtype)
        # more blocks than max_running full contexts could never be used at once
        cap = cfg.max_running * self.mcfg.n_layer * -(-self.context // cfg.block_size)
        self.pool = BlockPool(self.mcfg, max(1, min(cap, cfg.kv_memory_bytes // per_block)), cfg.block_size,
                              w.device, w.dtype, cfg.enable_prefix_caching)
        self.device = w.device
        self.reserved = 0                     # blocks promised to running requests, not yet taken
        self.running: list[_Request] = []
        self.waiting: collections.deque[_Request] = collections.deque()
        self._inbox: list[_Request] = []
        self._cancels: list[EngineHandle] = []
        self._cv = threading.Condition()
        self._closed = False
        self._ids = itertools.count()
        self.counters = collections.Counter()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gpt3lab-engine")
        self._thread.start()

    # ---- EngineLike -----------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, request_id: str | None = None) -> EngineHandle:
        """Validate (raising InvalidRequestError/ContextLengthError/QueueFullError at once) and enqueue."""
        if self._closed:
            raise EngineClosedError("the engine is shut down; it accepts no new requests")
        prompt = [int(t) for t in prompt] or [self.tokenizer.eot_id]
        best_of = self._validate(prompt, params)
        h = EngineHandle(request_id or f"req-{next(self._ids)}", self)
        h.usage.prompt_tokens = len(prompt)
        req = _Request(h, prompt, params, best_of)
        with self._cv:
            if self._closed:
                raise EngineClosedError("the engine is shut down; it accepts no new requests")
            if len(self._inbox) + len(self.waiting) >= self.cfg.max_waiting:
                raise QueueFullError(f"the engine queue is full ({self.cfg.max_waiting} requests waiting); "
                                     f"retry later")
            self._inbox.append(req)
            self._cv.notify()
        return h

    def stats(self) -> dict:
        c = self.counters
        return {"running": len(self.running), "waiting": len(self.waiting) + len(self._inbox),
                "kv_blocks_used": self.pool.used(), "kv_blocks_total": self.pool.num_blocks,
                "kv_blocks_cached": len(self.pool.lru), "prefix_cache_hits": c["prefix_hit_tokens"],
                "prefix_cache_queries": c["prefix_query_tokens"], "finished": c["finished"],
                "cancelled": c["cancelled"], "steps": c["steps"], "generated_tokens": c["generated"]}

    def shutdown(self, cancel_running: bool = False) -> None:
        """Stop taking requests; finish (or cancel) the ones in flight, then stop the scheduler thread."""
        with self._cv:
            self._closed = True
            if cancel_running:
                self._cancels += [r.handle for r in self._inbox + list(self.waiting) + self.running]
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _cancel(self, handle: EngineHandle) -> None:
        with self._cv:
            self._cancels.append(handle)
            self._cv.notify()

    # ---- validation -----------------------------------------------------------------------------
    def _validate(self, prompt: list[int], p: SamplingParams) -> int:
        """Raise a typed error naming the bad parameter; return best_of."""
        V = self.tokenizer.vocab_size
        bad = [t for t in prompt if not 0 <= t < V]
        if bad:
            raise InvalidRequestError(f"prompt token id {bad[0]} is outside the vocabulary (0..{V - 1})", "prompt")
        _int_in(p.max_tokens, "max_tokens", 0, None)
        _num_in(p.temperature, "temperature", 0.0, 2.0)
        _num_in(p.top_p, "top_p", 0.0, 1.0, low_open=True)
        _int_in(p.top_k, "top_k", 0, None)
        _num_in(p.presence_penalty, "presence_penalty", -2.0, 2.0)
        _num_in(p.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        _int_in(p.n, "n", 1, 128)
        best_of = p.n if p.best_of is None else _int_in(p.best_of, "best_of", 1, 128)
        if best_of < p.n:
            raise InvalidRequestError(f"n={p.n} must be <= best_of={best_of}", "n")
        if p.logprobs is not None:
            _int_in(p.logprobs, "logprobs", 0, 5)
        if p.seed is not None:
            _int_in(p.seed, "seed", None, None)
        for t, b in p.logit_bias.items():
            _int_in(t, "logit_bias", 0, V - 1)
            _num_in(b, "logit_bias", -100.0, 100.0)
        for t in p.stop_token_ids:
            _int_in(t, "stop_token_ids", 0, V - 1)
        if len(p.stop) > 4 or any(not isinstance(s, str) or not s for s in p.stop):
            raise InvalidRequestError(f"stop={p.stop!r}: up to 4 non-empty strings", "stop")
        total = len(prompt) + p.max_tokens
        if total > self.context:
            raise ContextLengthError(
                f"prompt of {len(prompt)} tokens + max_tokens={p.max_tokens} = {total} tokens exceeds the "
                f"model's context of {self.context} tokens; shorten the prompt or lower max_tokens", "prompt")
        need = best_of * self._blocks_per_seq(total)
        if need > self.pool.num_blocks:
            raise InvalidRequestError(
                f"this request needs up to {need} KV cache blocks ({best_of} choice(s) x {total} tokens) but the "
                f"cache holds {self.pool.num_blocks}; lower max_tokens/n/best_of or give the engine more "
                f"kv_memory_bytes", "max_tokens")
        return best_of

    def _blocks_per_seq(self, total: int) -> int:
        """Most blocks one sequence of `total` tokens holds at once (banded layers keep only their window)."""
        bs, W, C = self.cfg.block_size, self.mcfg.local_window, self.cfg.max_batch_tokens
        full = -(-total // bs)
        return sum(min(full, (W + C) // bs + 2) if self.mcfg.is_banded(l) else full
                   for l in range(self.mcfg.n_layer))

    # ---- scheduler loop (background thread) -----------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                if not self._intake():
                    return
                self._admit()
                if self.running:
                    with torch.inference_mode():
                        self._step()
            except Exception as e:      # a bug or a device failure: fail the requests, keep the thread alive
                self._fail_all(e)

    def _intake(self) -> bool:
        """Take in new requests and cancellations; sleep while idle. False once shut down and drained."""
        with self._cv:
            while not (self._inbox or self._cancels or self.running or self.waiting or self._closed):
                self._cv.wait()
            new, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
        self.waiting.extend(new)
        for h in cancels:
            self._drop(h)
        return not (self._closed and not self.running and not self.waiting)

    def _drop(self, h: EngineHandle) -> None:
        """Cancel: free the request's blocks now and end its stream."""
        req = next((r for r in self.waiting if r.handle is h), None)
        if req is not None:
            self.waiting.remove(req)
        else:
            req = next((r for r in self.running if r.handle is h), None)
            if req is None:
                return                  # already finished
            self._release_request(req)
        self.counters["cancelled"] += 1
        h.close()

    def _admit(self) -> None:
        """Start waiting requests in arrival order while their worst-case KV blocks fit."""
        while self.waiting:
            req = self.waiting[0]
            n_seqs = sum(r.best_of for r in self.running)
            if self.running and n_seqs + req.best_of > self.cfg.max_running:
                return
            if not self._try_start(req):
                return
            self.waiting.popleft()
            self.running.append(req)

    def _try_start(self, req: _Request) -> bool:
        need = req.best_of * self._blocks_per_seq(len(req.prompt) + req.params.max_tokens)
        P, tables, hashes, hits = self._match_prefix(req)
        evictable = sum(1 for b in hits if self.pool.ref[b] == 0)
        budget = need - len(hits)
        if self.pool.available() - evictable < self.reserved + budget:
            return False
        for b in hits:
            self.pool.acquire(b)
        req.budget, self.reserved = budget, self.reserved + budget
        seq = self._new_seq(req, 0, tables)
        seq.computed, seq.hashes = P, hashes
        req.handle.usage.cached_tokens = P
        if self.cfg.enable_prefix_caching and not req.params.echo:
            self.counters["prefix_query_tokens"] += len(req.prompt)
            self.counters["prefix_hit_tokens"] += P
        return True

    def _match_prefix(self, req: _Request):
        """Longest cached prefix of the prompt (whole blocks, at least one prompt token left to run).

        -> (cached tokens P, per-layer tables, block hashes, hit block ids). Banded layers need only
        the blocks that the window of position P reaches. Echo needs every prompt logit: no reuse.
        """
        L, bs = self.mcfg.n_layer, self.cfg.block_size
        if req.params.echo or not self.cfg.enable_prefix_caching:
            return 0, [[] for _ in range(L)], [], []
        hashes = prefix_hashes(req.prompt[:-1], bs)
        dense = [l for l in range(L) if not self.mcfg.is_banded(l)]
        m = 0
        while m < len(hashes) and all(self.pool.lookup(hashes[m], l) is not None for l in dense):
            m += 1
        while m and not all(self.pool.lookup(hashes[j], l) is not None
                            for l in range(L) if self.mcfg.is_banded(l) for j in range(self._band_lo(m * bs), m)):
            m -= 1
        tables, hits = [], []
        for l in range(L):
            lo = self._band_lo(m * bs) if self.mcfg.is_banded(l) else 0
            tables.append([self.pool.lookup(hashes[j], l) if j >= lo else -1 for j in range(m)])
            hits += [b for b in tables[-1] if b >= 0]
        return m * bs, tables, hashes[:m], hits

    def _band_lo(self, pos: int) -> int:
        """First block a banded layer's window still reaches from a query at `pos`."""
        return max(0, pos - self.mcfg.local_window + 1) // self.cfg.block_size

    def _new_seq(self, req: _Request, j: int, tables: list[list[int]]) -> _Seq:
        g = sample_generator(req.params.seed, j, self.device)   # choice j: its own stream, whatever is batched
        seq = _Seq(req, j, list(req.prompt), tables, g, stream=TextStream(self.tokenizer, req.params.stop))
        req.seqs.append(seq)
        return seq

    # ---- block bookkeeping ------------------------------------------------------------------------
    def _alloc(self, req: _Request) -> int:
        if req.budget > 0:
            req.budget -= 1
            self.reserved -= 1
        elif self.pool.available() <= self.reserved:
            raise RuntimeError("KV block reservation exceeded (engine bug)")
        return self.pool.allocate()

    def _give_back(self, req: _Request, b: int) -> None:
        if self.pool.release(b):
            req.budget += 1
            self.reserved += 1

    def _ensure_blocks(self, s: _Seq, upto: int) -> None:
        """Allocate blocks so every layer's table covers positions 0..upto-1."""
        bs = self.cfg.block_size
        for t in s.tables:
            while len(t) * bs < upto:
                t.append(self._alloc(s.req))

    def _register_blocks(self, s: _Seq) -> None:
        """Blocks that just became full become findable by the hash of all tokens up to their end."""
        if not self.cfg.enable_prefix_caching:
            return
        bs = self.cfg.block_size
        while len(s.hashes) < s.computed // bs:
            j = len(s.hashes)
            h = block_hash(s.hashes[-1] if s.hashes else b"", s.tokens[j * bs:(j + 1) * bs])
            s.hashes.append(h)
            for layer, t in enumerate(s.tables):
                if t[j] >= 0:
                    self.pool.register(t[j], h, layer)

    def _free_outside_window(self, s: _Seq) -> None:
        """Banded layers: give back blocks no future query of this sequence can see."""
        upto = self._band_lo(s.computed)
        for layer, t in enumerate(s.tables):
            if self.mcfg.is_banded(layer):
                for j in range(min(upto, len(t))):
                    if t[j] >= 0:
                        self._give_back(s.req, t[j])
                        t[j] = -1

    def _release_seq(self, s: _Seq) -> None:
        for t in s.tables:
            for b in t:
                if b >= 0:
                    self._give_back(s.req, b)
            t.clear()

    def _release_request(self, req: _Request) -> None:
        for s in req.seqs:
            self._release_seq(s)
        self.reserved -= req.budget
        req.budget = 0
        if req in self.running:
            self.running.remove(req)

    def _fail_all(self, e: Exception) -> None:
        """End every running and waiting request with an EngineInternalError (one per handle)."""
        msg = f"the engine failed: {type(e).__name__}: {e}"
        for req in list(self.running):
            self._release_request(req)
            req.handle._put(EngineInternalError(msg))
        while self.waiting:
            self.waiting.popleft().handle._put(EngineInternalError(msg))

    # ---- one step: plan, forward, sample --------------------------------------------------------
    def _step(self) -> None:
        plan, segs, rows = self._plan()
        logits = self._forward(plan, segs, rows)                                  # (R, V)
        self.counters["steps"] += 1
        seqs, rows = self._advance(plan, logits)
        if seqs:
            if rows != list(range(logits.shape[0])):    # echo rows or forked choices: pick/repeat rows
                logits = logits[torch.tensor(rows, device=logits.device)]
            self._sample_and_emit(seqs, logits)

    def _plan(self):
        """Decode rows (one token each) first, then prompt chunks within max_batch_tokens."""
        seqs = [s for r in self.running for s in r.seqs if not s.finished]
        dec = [s for s in seqs if s.pending == 1]
        budget = self.cfg.max_batch_tokens - len(dec)
        plan = [(s, 1) for s in dec]
        for s in seqs:
            if s.pending > 1 and budget > 0:
                plan.append((s, min(s.pending, budget)))
                budget -= plan[-1][1]
        segs, rows, at = [], [], 0
        for s, c in plan:
            self._ensure_blocks(s, s.computed + c)
            segs.append(Segment(s.tables, s.computed, c))
            if self._wants_echo(s):
                rows.extend(range(at, at + c))          # every prompt position's logits
            elif s.computed + c == len(s.tokens):
                rows.append(at + c - 1)                 # the next token's logits
            at += c
        return plan, segs, rows

    def _wants_echo(self, s: _Seq) -> bool:
        return s.req.params.echo and s.index == 0 and s.computed < len(s.req.prompt)

    def _forward(self, plan, segs: list[Segment], rows: list[int]) -> torch.Tensor:
        """The model's trunk over the packed tokens (1, N); the unembedding only on `rows` -> (R, V)."""
        step = PagedStep(self.pool, segs)
        ids = [t for s, c in plan for t in s.tokens[s.computed:s.computed + c]]
        x = self.model.hidden(torch.tensor([ids], device=self.device), cache=step)[0]   # (N, d) ln_f output
        if len(rows) < len(ids):        # only the rows that sample (or echo) reach the unembedding
            x = x[torch.tensor(rows, dtype=torch.long, device=self.device)]           # (R, d)
        return self.model.lm_head(x).float()                                        # (R, V)

    def _advance(self, plan, logits: torch.Tensor) -> tuple[list[_Seq], list[int]]:
        """Move sequences forward; -> (sequences that sample now, the row of `logits` each samples from)."""
        seqs, rows, i = [], [], 0
        for s, c in plan:
            start, echo = s.computed, self._wants_echo(s)
            s.computed += c
            self._register_blocks(s)
            self._free_outside_window(s)
            if echo:
                self._echo_logprobs(s.req, start, logits[i:i + c])
                i += c
            elif s.computed == len(s.tokens):
                i += 1
            if s.computed == len(s.tokens):
                new = [s] if s.req.forked else self._fork(s.req)
                seqs += new
                rows += [i - 1] * len(new)
        return seqs, rows

    # ---- choices: fork, echo ----------------------------------------------------------------------
    def _fork(self, req: _Request) -> list[_Seq]:
        """The prompt is done: make the other choices share its blocks (the partial last one copied)."""
        req.forked = True
        s0 = req.seqs[0]
        if req.params.max_tokens == 0:
            for j in range(req.params.n):
                if req.params.echo:
                    req.handle._put(self._echo_event(req, j))
                req.handle._put(TokenEvent(j, finish_reason="length"))
            self._complete(req, select=False)
            return []
        for j in range(1, req.best_of):
            child = self._new_seq(req, j, [self._share(req, t, s0.computed) for t in s0.tables])
            child.computed, child.hashes = s0.computed, list(s0.hashes)
        if req.params.echo:
            for s in req.seqs:
                ev = self._echo_event(req, s.index)
                s.offset = len(ev.text)
                self._put(s, ev)
        return list(req.seqs)

    def _share(self, req: _Request, table: list[int], n_tokens: int) -> list[int]:
        full = n_tokens // self.cfg.block_size
        out = []
        for j, b in enumerate(table):
            if b >= 0 and j < full:
                self.pool.acquire(b)
            elif b >= 0:                                 # the partial block: written to by each choice
                nb = self._alloc(req)
                self.pool.copy_block(b, nb)
                b = nb
            out.append(b)
        return out

    def _echo_logprobs(self, req: _Request, start: int, logits: torch.Tensor) -> None:
        """Logits of prompt positions start.. -> the logprob of each following prompt token."""
        if start == 0:
            req.echo_lp.append(None)
            req.echo_top.append(None)
        nxt = req.prompt[start + 1:start + 1 + logits.shape[0]]
        lp = logits[:len(nxt)].log_softmax(-1)                                     # (T, V)
        ids = torch.tensor(nxt, device=lp.device)[:, None]
        req.echo_lp += lp.gather(1, ids)[:, 0].tolist()
        if req.params.logprobs:
            req.echo_top += self._top(lp, req.params.logprobs)

    def _echo_event(self, req: _Request, j: int) -> TokenEvent:
        texts = [self.tokenizer.decode([t]) for t in req.prompt]
        offsets = list(itertools.accumulate([0] + [len(t) for t in texts[:-1]]))
        return TokenEvent(j, self.tokenizer.decode(req.prompt), list(req.prompt), texts, list(req.echo_lp),
                          list(req.echo_top) if req.params.logprobs else None, offsets)

    def _top(self, lp: torch.Tensor, k: int) -> list[dict[str, float]]:
        """The k most likely tokens of each row as {text: logprob}; tokens with the same text keep the best."""
        vals, ids = lp.topk(k, dim=-1)
        out = []
        for vr, ir in zip(vals.tolist(), ids.tolist()):
            d: dict[str, float] = {}
            for v, i in zip(vr, ir):
                d.setdefault(self.tokenizer.decode([i]), v)
            out.append(d)
        return out

    # ---- sampling step ----------------------------------------------------------------------------
    def _sample_and_emit(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """logits (S, V): row i is seqs[i]'s next-token logits. Sample, then emit one event per sequence."""
        adjusted, undo = self._adjust(seqs, logits)
        tok = self._sample(seqs, adjusted)                                          # (S,)
        if undo is not None:           # logit_bias was added in place: put the raw logits back exactly
            r, t, saved = undo
            logits[r, t] = saved
        raw = logits.log_softmax(-1)   # reported logprobs (S, V): one fused pass, cheaper than logsumexp
        lps = raw.gather(1, tok[:, None])[:, 0].tolist()
        k = max(s.req.params.logprobs or 0 for s in seqs)
        tops = self._top(raw, k) if k else [None] * len(seqs)
        for s, t, lp, top in zip(seqs, tok.tolist(), lps, tops):
            n = s.req.params.logprobs
            self._emit(s, t, lp, dict(itertools.islice(top.items(), n)) if n else None)

    def _adjust(self, seqs: list[_Seq], logits: torch.Tensor):
        """logit_bias, presence/frequency penalties, and no ids beyond the tokenizer's vocabulary.

        -> (adjusted logits, undo). With logit_bias alone the bias is added in place (no (S, V) copy) and
        undo = (rows, ids, raw values) restores `logits`; otherwise a new tensor and undo None.
        """
        V = self.tokenizer.vocab_size
        ps = [s.req.params for s in seqs]
        copy = logits.shape[1] > V or any(p.presence_penalty or p.frequency_penalty for p in ps)
        if not copy:
            rows = [(i, t, b) for i, p in enumerate(ps) for t, b in p.logit_bias.items()]
            if not rows:
                return logits, None
            r, t, b = (list(c) for c in zip(*rows))
            saved = logits[r, t]
            logits[r, t] += torch.tensor(b, device=logits.device, dtype=logits.dtype)
            return logits, (r, t, saved)
        if logits.shape[1] > V:
            logits = logits.clone()
            logits[:, V:] = float("-inf")
        logits = apply_logit_bias(logits, [p.logit_bias for p in ps])
        if not any(p.presence_penalty or p.frequency_penalty for p in ps):
            return logits, None
        counts = torch.zeros_like(logits)
        for i, s in enumerate(seqs):
            if s.counts:
                counts[i, list(s.counts)] = torch.tensor(list(s.counts.values()), dtype=logits.dtype,
                                                         device=logits.device)
        return apply_penalties(logits, counts, torch.tensor([p.presence_penalty for p in ps]),
                               torch.tensor([p.frequency_penalty for p in ps])), None

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor) -> torch.Tensor:
        """One token per row of the adjusted logits (S, V): argmax where temperature is 0, else an inverse-CDF
        draw (sampling.draw) from the temperature/top-k/top-p filtered distribution, with one uniform from
        the row's own generator: the same draw gpt3lab.generate makes with that seed, whatever is batched."""
        ps = [s.req.params for s in seqs]
        hot = [i for i, p in enumerate(ps) if p.temperature > 0]
        if len(hot) < len(ps):
            tok = logits.argmax(-1)                                                  # (S,) greedy
        else:
            tok = torch.empty(len(ps), dtype=torch.long, device=logits.device)
        if not hot:
            return tok
        x = logits if len(hot) == len(ps) else logits[torch.tensor(hot, device=logits.device)]   # (H, V)
        x = x / torch.tensor([ps[i].temperature for i in hot], device=x.device, dtype=x.dtype)[:, None]
        if any(ps[i].top_k for i in hot):
            x = top_k_filter(x, torch.tensor([ps[i].top_k for i in hot]))
        if any(ps[i].top_p < 1 for i in hot):
            x = top_p_filter(x, torch.tensor([ps[i].top_p for i in hot]))
        drawn = draw(x, uniforms(len(hot), [seqs[i].generator for i in hot], x.device))   # (H,)
        if len(hot) == len(ps):
            return drawn
        tok[hot] = drawn
        return tok

    # ---- events -----------------------------------------------------------------------------------
    def _emit(self, s: _Seq, tok: int, lp: float, top: dict | None) -> None:
        req, p = s.req, s.req.params
        req.handle.usage.completion_tokens += 1
        self.counters["generated"] += 1
        if tok == self.tokenizer.eot_id or tok in p.stop_token_ids:
            return self._finish(s, TokenEvent(s.index, s.stream.flush(), finish_reason="stop"))
        s.tokens.append(tok)
        s.out.append(tok)
        s.counts[tok] += 1
        s.score += lp
        delta, stopped = s.stream.push(tok)
        text = self.tokenizer.decode([tok])
        ev = TokenEvent(s.index, delta, [tok], [text], [lp], [top] if p.logprobs else None, [s.offset])
        s.offset += len(text)
        if stopped:
            ev.finish_reason = "stop"
        elif len(s.out) >= p.max_tokens:
            ev.text += s.stream.flush()
            ev.finish_reason = "length"
        else:
            return self._put(s, ev)
        self._finish(s, ev)

    def _put(self, s: _Seq, ev: TokenEvent) -> None:
        if s.req.best_of > s.req.params.n:
            s.events.append(ev)        # only the best n choices are sent, once all are done
        else:
            s.req.handle._put(ev)

    def _finish(self, s: _Seq, ev: TokenEvent) -> None:
        self._put(s, ev)
        s.finished = True
        self._release_seq(s)           # its blocks go back (or stay cached) at once
        if all(x.finished for x in s.req.seqs):
            self._complete(s.req)

    def _complete(self, req: _Request, select: bool = True) -> None:
        """All choices done: send the best n of best_of (by total logprob), free everything, end the stream."""
        if select and req.best_of > req.params.n:
            best = sorted(req.seqs, key=lambda s: -s.score)[:req.params.n]
            for new, s in enumerate(best):
                for ev in s.events:
                    ev.index = new
                    req.handle._put(ev)
        self._release_request(req)
        self.counters["finished"] += 1
        req.handle.close()


def _num_in(v, name: str, lo: float | None, hi: float | None, low_open: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    if ok and lo is not None:
        ok = v > lo if low_open else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        lo_s = "-inf" if lo is None else lo
        raise InvalidRequestError(f"{name}={v!r} must be a number in {'(' if low_open else '['}{lo_s}, "
                                  f"{'inf' if hi is None else hi}]", name)
    return v


def _int_in(v, name: str, lo: int | None, hi: int | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidRequestError(f"{name}={v!r} must be an integer in [{'-inf' if lo is None else lo}, "
                                  f"{'inf' if hi is None else hi}]", name)
    return v


__all__ = ["Engine", "EngineConfig", "EngineHandle"]
