"""The inference engine: continuous batching over a paged KV cache with prefix caching.

    engine = Engine(model, tokenizer)                       # starts the scheduler thread
    h = engine.submit(tokenizer.encode("Hello"), SamplingParams(max_tokens=20, temperature=0))
    text = "".join(ev.text for ev in h)                     # or `async for ev in h`
    engine.shutdown()

One background thread runs the loop. Each iteration it takes in new requests and cancellations,
admits waiting requests whose worst-case KV blocks fit the pool (so decoding never runs out of
memory), then runs ONE forward pass over a packed batch: one new token for every decoding sequence
plus chunks of prompts being prefilled, within `max_batch_tokens`. All rows share each layer's
weight reads (one matmul per layer); attention runs per sequence over its blocks.

A request with n (or best_of) choices prefills its prompt once; when the prompt is done the choices
fork (full blocks shared by reference, the partial last block copied) and decode as separate rows.

The parts, each in its own module: kv_manager.KVManager (block reservations, prefix matching,
tables over paged_cache.BlockPool), scheduler.Scheduler (admission, packing of a step),
batch_sampler.BatchSampler (adjusted logits -> tokens, on sampling.choose) and events (tokens ->
TokenEvents). This module is the glue: the thread, submit/cancel/shutdown, and one step.
"""
from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt3lab.attention_spec import slide
from gpt3lab.generate import events
from gpt3lab.generate.api import (EngineClosedError, EngineInternalError, EventStream, InvalidRequestError,
                                  QueueFullError, SamplingParams, TokenEvent, check_token_ids)
from gpt3lab.generate.api import start_tokens
from gpt3lab.generate.batch_sampler import BatchSampler
from gpt3lab.generate.core import DecodeCore, model_specs
from gpt3lab.generate.kv_manager import KVManager
from gpt3lab.generate.paged_cache import BlockPool
from gpt3lab.generate.sampling import sample_generator
from gpt3lab.generate.scheduler import Batch, Request, Scheduler, Seq
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
class EngineConfig:
    """Engine knobs. kv_memory_bytes is the KV cache budget (blocks = budget // bytes per block)."""

    block_size: int = 16
    kv_memory_bytes: int = 1 << 30
    max_batch_tokens: int = 512           # tokens per forward pass (decode rows + prefill chunks)
    max_running: int = 64                 # sequences decoding at once
    max_waiting: int = 1024               # requests queued before QueueFullError
    enable_prefix_caching: bool = True
    num_blocks: int | None = None         # the pool's exact size in blocks (generate() sizes it per request);
                                          # None: from kv_memory_bytes


class Engine:
    """Continuous-batching engine over `model` (a gpt3lab GPT); implements api.EngineLike.

    sampler: a BatchSampler (or subclass) picking each step's tokens. on_step: called with the engine
    on the scheduler thread before every step (to slow steps down or inject a failure in tests, or to
    observe the engine); an exception it raises fails the running requests like a device error would.
    compile: compile the decode step (core.DecodeCore; None: as the model says). background=False: no thread; `drive(handle)` runs
    the steps in the caller's thread as its events are read (generate()'s offline engine, like vLLM's LLM).
    """

    def __init__(self, model, tokenizer, config: EngineConfig | None = None, *,
                 sampler: BatchSampler | None = None, on_step: Callable[["Engine"], None] | None = None,
                 compile=None, background: bool = True, **overrides):
        self.cfg = cfg = config or EngineConfig(**overrides)
        self.model = model.eval()
        prepare_for_inference(self.model)  # its layout/quantization now, never while other threads read it
        self.tokenizer = tokenizer
        self.mcfg = model.config
        self.context = model.config.context
        w = model.transformer.wte.weight
        self.device = w.device
        self.pool = BlockPool(self.mcfg, self._num_blocks(w.dtype), cfg.block_size, w.device, w.dtype,
                              cfg.enable_prefix_caching)
        self.kv = KVManager(self.pool, self.mcfg, cfg.max_batch_tokens, cfg.enable_prefix_caching,
                            specs=model_specs(model))
        self.core = DecodeCore(self.model, self.pool, compile)
        self.scheduler = Scheduler(self.kv, cfg.max_running, cfg.max_batch_tokens)
        self.sampler = sampler or BatchSampler(tokenizer.vocab_size)
        self.on_step = on_step
        self._inbox: list[Request] = []
        self._cancels: list[EngineHandle] = []
        self._cv = threading.Condition()
        self._closed = False
        self._ids = itertools.count()
        self.counters = collections.Counter()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="gpt3lab-engine")
            self._thread.start()

    def _num_blocks(self, dtype: torch.dtype) -> int:
        """The KV budget in blocks, capped at what max_running full contexts could ever hold at once."""
        cfg = self.cfg
        if cfg.num_blocks is not None:
            return cfg.num_blocks
        per_block = BlockPool.bytes_per_block(self.mcfg, cfg.block_size, dtype)
        cap = cfg.max_running * self.mcfg.n_layer * -(-self.context // cfg.block_size)
        return max(1, min(cap, cfg.kv_memory_bytes // per_block))

    # ---- EngineLike -----------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, request_id: str | None = None) -> EngineHandle:
        """Validate (raising InvalidRequestError/ContextLengthError/QueueFullError at once) and enqueue."""
        if self._closed:
            raise EngineClosedError("the engine is shut down; it accepts no new requests")
        prompt = start_tokens([int(t) for t in prompt], self.tokenizer.eot_id)
        best_of = self._validate(prompt, params)
        h = EngineHandle(request_id or f"req-{next(self._ids)}", self)
        h.usage.prompt_tokens = len(prompt)
        req = Request(h, prompt, params, best_of)
        with self._cv:
            if self._closed:
                raise EngineClosedError("the engine is shut down; it accepts no new requests")
            if len(self._inbox) + len(self.scheduler.waiting) >= self.cfg.max_waiting:
                raise QueueFullError(f"the engine queue is full ({self.cfg.max_waiting} requests waiting); "
                                     f"retry later")
            self._inbox.append(req)
            self._cv.notify()
        return h

    def stats(self) -> dict:
        c, sch = self.counters, self.scheduler
        return {"running": len(sch.running), "waiting": len(sch.waiting) + len(self._inbox),
                "kv_blocks_used": self.pool.used(), "kv_blocks_total": self.pool.num_blocks,
                "kv_blocks_cached": len(self.pool.lru), "prefix_cache_hits": c["prefix_hit_tokens"],
                "prefix_cache_queries": c["prefix_query_tokens"], "finished": c["finished"],
                "cancelled": c["cancelled"], "steps": c["steps"], "generated_tokens": c["generated"]}

    def shutdown(self, cancel_running: bool = False) -> None:
        """Stop taking requests; finish (or cancel) the ones in flight, then stop the scheduler thread."""
        with self._cv:
            self._closed = True
            if cancel_running:
                sch = self.scheduler
                self._cancels += [r.handle for r in self._inbox + list(sch.waiting) + sch.running]
            self._cv.notify()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join()

    def _cancel(self, handle: EngineHandle) -> None:
        with self._cv:
            self._cancels.append(handle)
            self._cv.notify()

    # ---- validation -----------------------------------------------------------------------------
    def _validate(self, prompt: list[int], p: SamplingParams) -> int:
        """SamplingParams.validate, plus the engine's own limit (the KV cache must hold the request); -> best_of."""
        check_token_ids(prompt, self.tokenizer.vocab_size)
        best_of = p.validate(self.tokenizer.vocab_size, self.context, len(prompt))
        total = len(prompt) + p.max_tokens
        total = min(total, self.context)          # a sliding window never holds more than the context
        need = best_of * self.kv.blocks_per_seq(total)
        if need > self.pool.num_blocks:
            raise InvalidRequestError(
                f"this request needs up to {need} KV cache blocks ({best_of} choice(s) x {total} tokens) but the "
                f"cache holds {self.pool.num_blocks}; lower max_tokens/n/best_of or give the engine more "
                f"kv_memory_bytes", "max_tokens")
        return best_of

    # ---- the loop (background thread) -------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                if not self._iteration(wait=True):
                    return
            except Exception as e:      # a bug or a device failure: fail the requests, keep the thread alive
                self._fail_all(e)

    def _iteration(self, wait: bool) -> bool:
        """Intake, admission and (when anything runs) one step. False once shut down and drained."""
        if not self._intake(wait):
            return False
        self.scheduler.admit(self._start)
        if self.scheduler.running:
            if self.on_step is not None:
                self.on_step(self)
            with torch.inference_mode():
                self._step()
        return True

    def drive(self, handle: EngineHandle):
        """Offline (background=False): yield `handle`'s events, running steps in this thread as they are needed.

        Other requests submitted to this engine are batched with it and advance too. An exception in a step
        ends every request (EngineInternalError) and is raised here.
        """
        i = 0
        while True:
            items, i, ended = handle._take(i)
            yield from items
            if ended:
                return
            try:
                progressed = self._iteration(wait=False)
            except Exception as e:
                self._fail_all(e)
                raise
            if not progressed:
                return

    def _intake(self, wait: bool = True) -> bool:
        """Take in new requests and cancellations; sleep while idle (if `wait`). False once shut down and drained."""
        sch = self.scheduler
        with self._cv:
            while wait and not (self._inbox or self._cancels or sch.running or sch.waiting or self._closed):
                self._cv.wait()
            new, self._inbox = self._inbox, []
            cancels, self._cancels = self._cancels, []
        sch.waiting.extend(new)
        for h in cancels:
            self._drop(h)
        return not (self._closed and not sch.running and not sch.waiting)

    def _drop(self, h: EngineHandle) -> None:
        """Cancel: free the request's blocks now and end its stream."""
        req = self.scheduler.find(h)
        if req is None:
            return                      # already finished
        self._release(req)
        self.counters["cancelled"] += 1
        h.close()

    def _start(self, req: Request) -> bool:
        """Reserve the request's blocks (False if they do not fit yet) and make its first sequence."""
        got = self.kv.reserve(req)
        if got is None:
            return False
        P, tables, hashes = got
        seq = self._new_seq(req, 0, tables)
        seq.computed, seq.hashes = P, hashes
        req.handle.usage.cached_tokens = P
        if self.cfg.enable_prefix_caching and not req.params.echo:
            self.counters["prefix_query_tokens"] += len(req.prompt)
            self.counters["prefix_hit_tokens"] += P
        return True

    def _new_seq(self, req: Request, j: int, tables: list[list[int]]) -> Seq:
        g = sample_generator(req.params.seed, j, self.device)   # choice j: its own stream, whatever is batched
        seq = Seq(req, j, list(req.prompt), tables, g, stream=TextStream(self.tokenizer, req.params.stop))
        req.seqs.append(seq)
        return seq

    def _release(self, req: Request) -> None:
        self.kv.release_request(req)
        self.scheduler.retire(req)

    def _fail_all(self, e: Exception) -> None:
        """End every running and waiting request with an EngineInternalError (one per handle)."""
        msg = f"the engine failed: {type(e).__name__}: {e}"
        sch = self.scheduler
        for req in list(sch.running):
            self._release(req)
            req.handle._put(EngineInternalError(msg))
        while sch.waiting:
            sch.waiting.popleft().handle._put(EngineInternalError(msg))

    # ---- one step: plan, forward, sample --------------------------------------------------------
    def _step(self) -> None:
        batch = self.scheduler.next_batch()
        logits = self._forward(batch)                                                # (R, V)
        self.counters["steps"] += 1
        seqs, rows = self._advance(batch.plan, logits)
        if seqs:
            if rows != list(range(logits.shape[0])):    # echo rows or forked choices: pick/repeat rows
                logits = logits[torch.tensor(rows, device=logits.device)]
            self._sample_and_emit(seqs, logits)

    def _forward(self, batch: Batch) -> torch.Tensor:
        """The decode core over the packed tokens; the logits of the batch's rows -> (R, V) fp32."""
        ids = [t for s, c in batch.plan for t in s.tokens[s.computed:s.computed + c]]
        return self.core.forward(batch.segments, ids, batch.rows)

    def _advance(self, plan, logits: torch.Tensor) -> tuple[list[Seq], list[int]]:
        """Move sequences forward; -> (sequences that sample now, the row of `logits` each samples from)."""
        seqs, rows, i = [], [], 0
        for s, c in plan:
            start, echo = s.computed, s.wants_echo
            s.computed += c
            self.kv.register_blocks(s)
            self.kv.free_outside_window(s)
            if echo:
                events.echo_logprobs(s.req, start, logits[i:i + c], self.tokenizer.decode)
                i += c
            elif s.computed == len(s.tokens):
                i += 1
            if s.computed == len(s.tokens):
                new = [s] if s.req.forked else self._fork(s.req)
                seqs += new
                rows += [i - 1] * len(new)
        return seqs, rows

    def _fork(self, req: Request) -> list[Seq]:
        """The prompt is done: make the other choices share its blocks (the partial last one copied)."""
        req.forked = True
        s0, decode = req.seqs[0], self.tokenizer.decode
        if req.params.max_tokens == 0:
            for j in range(req.params.n):
                if req.params.echo:
                    req.handle._put(events.echo_event(req, j, decode))
                req.handle._put(TokenEvent(j, finish_reason="length"))
            self._complete(req, select=False)
            return []
        for j in range(1, req.best_of):
            child = self._new_seq(req, j, [self.kv.share(req, t, s0.computed) for t in s0.tables])
            child.computed, child.hashes = s0.computed, list(s0.hashes)
        if req.params.echo:
            for s in req.seqs:
                ev = events.echo_event(req, s.index, decode)
                s.offset = len(ev.text)
                events.deliver(s, ev)
        return list(req.seqs)

    # ---- sampling and events --------------------------------------------------------------------
    def _sample_and_emit(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        """logits (S, V): row i is seqs[i]'s next-token logits. Sample, then emit one event per sequence."""
        toks, lps, raw = self.sampler(seqs, logits)
        k = max(s.req.params.logprobs or 0 for s in seqs)
        tops = events.top_alternatives(self.tokenizer.decode, raw, k) if k else [None] * len(seqs)
        for s, t, lp, top in zip(seqs, toks, lps, tops):
            n = s.req.params.logprobs
            s.req.handle.usage.completion_tokens += 1
            self.counters["generated"] += 1
            ev = events.token_event(s, t, lp, dict(itertools.islice(top.items(), n)) if n else None,
                                    self.tokenizer.eot_id, self.tokenizer.decode)
            if ev.finish_reason is None:
                events.deliver(s, ev)
                self._slide(s)
            else:
                self._finish(s, ev)

    def _slide(self, s: Seq) -> None:
        """sliding_window (attention_spec.slide): once the next token would sit past the context, drop the cache
        and recompute the last `context` tokens at positions 0..context-1 (prefilled like a prompt)."""
        if len(s.tokens) > self.context and s.req.params.sliding_window:
            self.kv.release_seq(s)
            s.tokens, s.computed, s.hashes = slide(s.tokens, self.context), 0, []
            self.counters["window_slides"] += 1

    def _finish(self, s: Seq, ev: TokenEvent) -> None:
        events.deliver(s, ev)
        s.finished = True
        self.kv.release_seq(s)          # its blocks go back (or stay cached) at once
        if all(x.finished for x in s.req.seqs):
            self._complete(s.req)

    def _complete(self, req: Request, select: bool = True) -> None:
        """All choices done: send the best n of best_of, free everything, end the stream."""
        if select and req.best_of > req.params.n:
            events.send_best(req)
        self._release(req)
        self.counters["finished"] += 1
        req.handle.close()


__all__ = ["Engine", "EngineConfig", "EngineHandle"]
