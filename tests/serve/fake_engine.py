"""A small, honest implementation of gpt3lab.generate.api.EngineLike for the server's tests.

One worker thread runs requests one at a time over a real (tiny) GPT with a full forward pass per
token (no KV cache, no batching): slow but obviously right, so the serving layer can be tested
before, and independently of, the real engine. Logprobs are the model's own log_softmax.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time

import torch

from gpt3lab.generate.api import (EngineClosedError, EventStream, InvalidRequestError, QueueFullError,
                                  SamplingParams, TokenEvent, check_token_ids)
from gpt3lab.generate.sampling import sample
from gpt3lab.generate.text import TextStream

class FakeHandle(EventStream):
    """The engine's event stream; cancel() just flags the worker."""

    def __init__(self, request_id: str):
        super().__init__(request_id)
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


class FakeEngine:
    """EngineLike over a GPT; `step_delay` seconds are added per token to make timing tests reliable."""

    def __init__(self, model, tokenizer, max_queue: int = 256, step_delay: float = 0.0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.context = model.config.context
        self.max_queue = max_queue
        self.step_delay = step_delay
        self._q: queue.Queue = queue.Queue()
        self._ids = itertools.count()
        self._closed = False
        self.running = 0
        self.cancelled = 0
        self.finished = 0
        self._worker = threading.Thread(target=self._loop, daemon=True, name="fake-engine")
        self._worker.start()

    # -- EngineLike -------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, request_id: str | None = None) -> FakeHandle:
        if self._closed:
            raise EngineClosedError("engine is shut down")
        self._validate(prompt, params)
        if self._q.qsize() >= self.max_queue:
            raise QueueFullError(f"engine queue is full ({self.max_queue} waiting); retry later")
        h = FakeHandle(request_id or f"req-{next(self._ids)}")
        h.usage.prompt_tokens = len(prompt)
        self._q.put((h, list(prompt), params))
        return h

    def stats(self) -> dict:
        return {"running": self.running, "waiting": self._q.qsize(), "kv_blocks_used": 0,
                "kv_blocks_total": 0, "prefix_cache_hits": 0, "prefix_cache_queries": 0,
                "finished": self.finished, "cancelled": self.cancelled}

    def shutdown(self, cancel_running: bool = False) -> None:
        self._closed = True
        self._q.put(None)
        self._worker.join(timeout=10)

    # -- internals ----------------------------------------------------------------------------
    def _validate(self, prompt: list[int], p: SamplingParams) -> None:
        """The real engine's rules (SamplingParams.validate), less its KV cache budget."""
        if not prompt:
            raise InvalidRequestError("prompt must hold at least one token", "prompt")
        check_token_ids(prompt, self.tokenizer.vocab_size)
        p.validate(self.tokenizer.vocab_size, self.context, len(prompt))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            h, prompt, params = item
            self.running = 1
            try:
                with torch.no_grad():
                    self._run(h, prompt, params)
            except BaseException as e:   # surface engine bugs to the reader instead of hanging it
                h._put(e)
            finally:
                self.running = 0
                self.finished += 1
                h.close()

    def _run(self, h: FakeHandle, prompt: list[int], p: SamplingParams) -> None:
        best_of = max(p.best_of or p.n, p.n)
        if best_of == p.n:
            for j in range(p.n):
                for ev in self._choice(h, prompt, p, j):
                    h._put(ev)
            return
        done = [list(self._choice(h, prompt, p, j)) for j in range(best_of)]
        score = [sum(x for ev in evs for x in ev.logprobs[-len(ev.tokens):] if x is not None) for evs in done]
        keep = sorted(range(best_of), key=lambda j: -score[j])[:p.n]
        for new, j in enumerate(keep):
            for ev in done[j]:
                ev.index = new
                h._put(ev)

    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        logits, _ = self.model(torch.tensor([ids]))
        return logits[0].float().log_softmax(-1)                                    # (T, V)

    def _top(self, row: torch.Tensor, k: int) -> dict[str, float]:
        vals, idx = row.topk(k)
        return {self.tokenizer.decode([int(i)]): float(v) for v, i in zip(vals, idx)}

    def _echo_event(self, j: int, prompt: list[int], p: SamplingParams) -> TokenEvent:
        lp = self._logprobs(prompt)
        texts = [self.tokenizer.decode([t]) for t in prompt]
        logprobs = [None] + [float(lp[i - 1, t]) for i, t in enumerate(prompt) if i > 0]
        top = None
        if p.logprobs:
            top = [None] + [self._top(lp[i - 1], p.logprobs) for i in range(1, len(prompt))]
        offsets = list(itertools.accumulate([0] + [len(t) for t in texts[:-1]]))
        return TokenEvent(index=j, text=self.tokenizer.decode(prompt), tokens=list(prompt), token_texts=texts,
                          logprobs=logprobs, top_logprobs=top, text_offset=offsets)

    def _choice(self, h: FakeHandle, prompt: list[int], p: SamplingParams, j: int):
        offset = 0
        if p.echo:
            ev = self._echo_event(j, prompt, p)
            offset = len(ev.text)
            yield ev
        gen = torch.Generator().manual_seed(p.seed + j) if p.seed is not None else None
        stream = TextStream(self.tokenizer, p.stop)
        ids, out = list(prompt), []
        stops = {self.tokenizer.eot_id, *p.stop_token_ids}
        for _ in range(p.max_tokens):
            if h.cancelled.is_set():
                self.cancelled += 1
                return
            if self.step_delay:
                time.sleep(self.step_delay)
            row = self._logprobs(ids)[-1]                                           # (V,)
            logits = self._penalized(row, out, p)
            tok, _ = sample(logits[None], p.temperature, p.top_k, p.top_p, gen)
            t = int(tok[0])
            h.usage.completion_tokens += 1
            if t in stops:
                yield TokenEvent(index=j, text=stream.flush(), finish_reason="stop")
                return
            ids.append(t)
            out.append(t)
            delta, stopped = stream.push(t)
            ev = TokenEvent(index=j, text=delta, tokens=[t], token_texts=[self.tokenizer.decode([t])],
                            logprobs=[float(row[t])], text_offset=[offset],
                            top_logprobs=[self._top(row, p.logprobs)] if p.logprobs else None)
            offset += len(ev.token_texts[0])
            if stopped:
                ev.finish_reason = "stop"
                yield ev
                return
            yield ev
        yield TokenEvent(index=j, text=stream.flush(), finish_reason="length")

    def _penalized(self, row: torch.Tensor, out: list[int], p: SamplingParams) -> torch.Tensor:
        logits = row.clone()
        for t, b in p.logit_bias.items():
            logits[t] += b
        if out and (p.presence_penalty or p.frequency_penalty):
            counts = torch.bincount(torch.tensor(out), minlength=logits.numel()).float()
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        return logits
