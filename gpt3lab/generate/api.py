"""The inference engine's public contract: requests in, streams of token events out.

The OpenAI-compatible server (gpt3lab.serve) talks only to these types and to an object with the
`EngineLike` shape below; it imports no model code. gpt3lab.generate.engine.Engine implements it.

Errors are typed so a server can map them to HTTP without guessing:
  InvalidRequestError (400, names the offending `param`), ContextLengthError (400,
  code "context_length_exceeded"), QueueFullError (429), EngineClosedError (503).
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Protocol

from gpt3lab.errors import ConfigError, ContextOverflowError, UserError


class EngineError(UserError):
    """Base class of the engine's request errors."""

    status = 400
    code: str | None = None

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class InvalidRequestError(EngineError, ConfigError):
    """A sampling parameter or prompt is invalid; `param` names it."""


class ContextLengthError(InvalidRequestError, ContextOverflowError):
    """prompt tokens + max_tokens exceed the model's context window."""

    code = "context_length_exceeded"


class QueueFullError(EngineError):
    status = 429
    code = "queue_full"


class EngineInternalError(EngineError):
    """The engine failed while running a request (a bug or an exhausted device), not the user's input."""

    status = 500
    code = "engine_error"


class EngineClosedError(EngineError):
    status = 503
    code = "engine_closed"


@dataclass
class SamplingParams:
    """Per-request sampling controls, with the legacy Completions API's names and defaults."""

    max_tokens: int = 16
    temperature: float = 1.0          # 0 = greedy; allowed [0, 2]
    top_p: float = 1.0                # (0, 1]
    top_k: int = 0                    # 0 = off
    n: int = 1                        # choices returned
    best_of: int | None = None        # generate best_of, return the n with highest total logprob (>= n)
    presence_penalty: float = 0.0     # [-2, 2]; subtract once per token already generated
    frequency_penalty: float = 0.0    # [-2, 2]; subtract per occurrence in the generated tokens
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> bias in [-100, 100]
    seed: int | None = None           # reproducible regardless of what else is batched
    stop: list[str] = field(default_factory=list)       # up to 4; not included in the output
    stop_token_ids: list[int] = field(default_factory=list)  # <|endoftext|> is always a stop token
    logprobs: int | None = None       # None = off; 0..20 = chosen token's logprob + top-N alternatives
    echo: bool = False                # prepend the prompt (and its token logprobs, first one None)
    sliding_window: bool = False      # max_tokens may run past the context: each token past it is predicted
                                      # from the last `context` tokens, recomputed (gpt3lab.generate docstring)

    def validate(self, vocab_size: int, context: int, prompt_tokens: int = 0) -> int:
        """The one check of a request, for the Python API, the CLI, the engine and the server alike.

        Raise InvalidRequestError naming the bad parameter (or ContextLengthError when prompt_tokens +
        max_tokens exceed `context`, unless sliding_window; then only the prompt must fit); return best_of.
        """
        _int_in(self.max_tokens, "max_tokens", 0, None)
        _num_in(self.temperature, "temperature", 0.0, 2.0)
        _num_in(self.top_p, "top_p", 0.0, 1.0, low_open=True)
        _int_in(self.top_k, "top_k", 0, None)
        _num_in(self.presence_penalty, "presence_penalty", -2.0, 2.0)
        _num_in(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        _int_in(self.n, "n", 1, MAX_N)
        best_of = self.n if self.best_of is None else _int_in(self.best_of, "best_of", 1, MAX_N)
        if best_of < self.n:
            raise InvalidRequestError(f"best_of={best_of} must be >= n={self.n}", "best_of")
        if self.logprobs is not None:
            _int_in(self.logprobs, "logprobs", 0, MAX_LOGPROBS)
        if self.seed is not None:
            _int_in(self.seed, "seed", None, None)
        for t, b in self.logit_bias.items():
            _int_in(t, "logit_bias", 0, vocab_size - 1)
            _num_in(b, "logit_bias", -100.0, 100.0)
        check_token_ids(self.stop_token_ids, vocab_size, "stop_token_ids")
        if len(self.stop) > MAX_STOP or any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidRequestError(f"stop={self.stop!r}: up to {MAX_STOP} non-empty strings", "stop")
        total = prompt_tokens + self.max_tokens
        if self.sliding_window and prompt_tokens > context:
            raise ContextLengthError(f"prompt of {prompt_tokens} tokens exceeds the model's context of {context} "
                                     f"tokens (sliding_window continues past the context, but the prompt must fit); "
                                     f"shorten the prompt", "prompt")
        if total > context and not self.sliding_window:
            raise ContextLengthError(
                f"prompt of {prompt_tokens} tokens + max_tokens={self.max_tokens} = {total} tokens exceeds the "
                f"model's context of {context} tokens; shorten the prompt, lower max_tokens, or set sliding_window "
                f"(generate --sliding-window) to continue past the context", "prompt")
        return best_of


MAX_N = 128                           # most choices (n, best_of) of one request
MAX_LOGPROBS = 20                     # most alternatives reported per token (vLLM's max_logprobs)
MAX_STOP = 4                          # most stop strings


def start_tokens(ids: list[int], eot_id: int) -> list[int]:
    """The tokens a prompt starts generation from: an empty prompt starts from <|endoftext|> (a document boundary)."""
    return ids or [eot_id]


def check_token_ids(ids, vocab_size: int, param: str = "prompt") -> None:
    """InvalidRequestError naming `param` unless every id is an integer in 0..vocab_size-1."""
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
            raise InvalidRequestError(f"{param} token id {t!r} is outside the vocabulary (0..{vocab_size - 1})",
                                      param)


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


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0            # prompt tokens served from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenEvent:
    """One step of one choice. Text deltas are whole UTF-8 characters; concatenated they give the text.

    With echo, a choice's first event carries the prompt: tokens = prompt ids, logprobs with None first.
    `text_offset` is the character offset of each token's text in the choice's full text (echo included).
    A token may carry an empty text delta (held back: incomplete UTF-8, or a possible stop-string start).
    The last event of a choice has finish_reason "stop" or "length" (its token list may be empty).
    """

    index: int                                   # choice index, 0..n-1
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)       # each token's own text (decoded alone)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None  # when logprobs >= 1: token text -> logprob
    text_offset: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_token: int | None = None                # the token id that ended the choice (not in `tokens`, as in
    stop_logprob: float | None = None            # the OpenAI API; generate() reports it), and its logprob


class EventStream:
    """A request's events: one thread writes them, any number of blocking or asyncio readers read them.

    Engines subclass it (adding cancel()) to make a RequestHandle. An exception put in the stream is
    raised in the readers; close() ends it.
    """

    _END = object()

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.usage = Usage()
        self.done = False
        self._buf: list = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def _put(self, item) -> None:
        with self._cond:
            self._buf.append(item)
            if item is self._END or isinstance(item, BaseException):
                self.done = True
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, ev in waiters:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:    # that reader's loop is closed
                pass

    def close(self) -> None:
        self._put(self._END)

    def _item(self, i: int):
        item = self._buf[i]
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[TokenEvent]:
        i = 0
        while True:
            with self._cond:
                while i >= len(self._buf):
                    self._cond.wait()
            item = self._item(i)
            i += 1
            if item is self._END:
                return
            yield item

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        ev = asyncio.Event()
        with self._cond:
            self._waiters.append((asyncio.get_running_loop(), ev))
        i = 0
        while True:
            ev.clear()            # cleared before reading: a put after the read sets it again
            items, i, ended = self._take(i)
            for item in items:
                yield item
            if ended:
                return
            await ev.wait()

    def _take(self, i: int) -> tuple[list, int, bool]:
        """The events buffered from index i on (an exception put in the stream is raised) -> (events, the next
        index, whether the stream ended)."""
        out = []
        while i < len(self._buf):
            item = self._item(i)
            i += 1
            if item is self._END:
                return out, i, True
            out.append(item)
        return out, i, False


class RequestHandle(Protocol):
    request_id: str
    usage: Usage                                  # final once the stream ends

    def __iter__(self) -> Iterator[TokenEvent]: ...          # blocking iteration
    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...    # asyncio iteration
    def cancel(self) -> None: ...                             # frees its KV blocks at once


class EngineLike(Protocol):
    tokenizer: object                              # encode/decode/eot_id/vocab_size
    context: int                                   # model context window in tokens

    def submit(self, prompt: list[int], params: SamplingParams,
               request_id: str | None = None) -> RequestHandle:
        """Validate (raising the errors above at once) and enqueue; events stream as decoding runs."""

    def stats(self) -> dict:
        """Counters for /metrics: running, waiting, kv blocks used/total, prefix cache hits/queries, ..."""

    def shutdown(self, cancel_running: bool = False) -> None: ...
