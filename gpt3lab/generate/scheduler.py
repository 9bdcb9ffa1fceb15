"""The engine's scheduler: which requests run, and which tokens of which sequence go into the next step.

Requests wait in arrival order; one starts when the KV manager can reserve its worst-case blocks and
the running sequences stay within `max_running`, so a started request never runs out of cache. Each
step packs one token for every decoding sequence first, then chunks of prompts being prefilled, up to
`max_batch_tokens` tokens in all.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch

from gpt3lab.generate.api import EventStream, SamplingParams, TokenEvent
from gpt3lab.generate.paged_cache import Segment
from gpt3lab.generate.text import TextStream


@dataclass
class Seq:
    """One choice being generated: its tokens, its block tables and its text/logprob bookkeeping."""

    req: "Request"
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

    @property
    def wants_echo(self) -> bool:
        """Choice 0 of an echo request needs every prompt position's logits until the prompt is done."""
        return (self.req.params.echo and self.index == 0 and not self.req.forked
                and self.computed < len(self.req.prompt))    # (a sliding window re-prefills after the fork)


@dataclass
class Request:
    handle: EventStream
    prompt: list[int]
    params: SamplingParams
    best_of: int
    seqs: list[Seq] = field(default_factory=list)
    budget: int = 0                       # KV blocks reserved for it and not yet taken
    echo_lp: list = field(default_factory=list)     # prompt token logprobs (echo)
    echo_top: list = field(default_factory=list)
    forked: bool = False


@dataclass
class Batch:
    """One step's work: (sequence, tokens to run) pairs, their cache segments, and the rows that need logits."""

    plan: list[tuple[Seq, int]]
    segments: list[Segment]
    rows: list[int]


class Scheduler:
    """Waiting and running requests; admission in arrival order; the packing of each step."""

    def __init__(self, kv, max_running: int, max_batch_tokens: int):
        self.kv = kv
        self.max_running, self.max_batch_tokens = max_running, max_batch_tokens
        self.running: list[Request] = []
        self.waiting: collections.deque[Request] = collections.deque()

    def admit(self, start) -> None:
        """Start waiting requests in arrival order while they fit; `start(req)` is False when it does not."""
        while self.waiting:
            req = self.waiting[0]
            n_seqs = sum(r.best_of for r in self.running)
            if self.running and n_seqs + req.best_of > self.max_running:
                return
            if not start(req):
                return
            self.running.append(self.waiting.popleft())

    def find(self, handle) -> Request | None:
        """Remove and return the waiting request of `handle`, else return its running one (or None)."""
        req = next((r for r in self.waiting if r.handle is handle), None)
        if req is not None:
            self.waiting.remove(req)
            return req
        return next((r for r in self.running if r.handle is handle), None)

    def retire(self, req: Request) -> None:
        if req in self.running:
            self.running.remove(req)

    def next_batch(self) -> Batch:
        """Decode rows (one token each) first, then prompt chunks within max_batch_tokens."""
        seqs = [s for r in self.running for s in r.seqs if not s.finished]
        dec = [s for s in seqs if s.pending == 1]
        budget = self.max_batch_tokens - len(dec)
        plan = [(s, 1) for s in dec]
        for s in seqs:
            if s.pending > 1 and budget > 0:
                plan.append((s, min(s.pending, budget)))
                budget -= plan[-1][1]
        segs, rows, at = [], [], 0
        for s, c in plan:
            self.kv.ensure_blocks(s, s.computed + c)
            segs.append(Segment(s.tables, s.computed, c))
            if s.wants_echo:
                rows.extend(range(at, at + c))          # every prompt position's logits
            elif s.computed + c == len(s.tokens):
                rows.append(at + c - 1)                 # the next token's logits
            at += c
        return Batch(plan, segs, rows)


__all__ = ["Batch", "Request", "Scheduler", "Seq"]
