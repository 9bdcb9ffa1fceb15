"""The serving layer: a Completions request -> SamplingParams -> engine handles -> response or SSE chunks.

Chat Completions are a thin layer on top: the chat template (gpt3lab.chat) renders the messages into
prompt tokens, the request becomes a CompletionRequest, and the completion's choices, logprobs and
stream chunks are reshaped into the chat form; sampling, admission and streaming are shared.

Knows the HTTP-facing contract (OpenAI's legacy Completions API) and the engine's contract
(gpt3lab.generate.api); imports no model code and never holds the model (POST /v1/inspect goes through
the inspector object it is given, gpt3lab.inspector.Inspector; tests/test_imports.py enforces both). Admission control lives here: at most
`max_concurrent` requests hold a slot, at most `max_queue` wait for one, the rest get 429. A client
that goes away (polled through `is_disconnected`) has its generations cancelled at once.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from gpt3lab.errors import UserError
from gpt3lab.generate.api import (EngineError, InvalidRequestError, QueueFullError, SamplingParams, TokenEvent,
                                  check_token_ids)
from gpt3lab.serve.access_log import note_usage
from gpt3lab.serve.metrics import Metrics
from gpt3lab.serve.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, InspectRequest,
                                    TokenizeRequest, token_id_key)

Disconnected = Callable[[], Awaitable[bool]] | None
MAX_CHOICES = 128             # prompts x n (or best_of) in one request
POLL_S = 0.1                  # how often a waiting request checks whether its client is still there


class ServeError(Exception):
    """An error with an HTTP status, rendered as OpenAI's {"error": {...}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    @classmethod
    def from_engine(cls, e: EngineError) -> "ServeError":
        kind = {429: "rate_limit_error", 503: "service_unavailable"}.get(e.status, "invalid_request_error")
        return cls(e.status, str(e), kind, getattr(e, "param", None), e.code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientDisconnected(Exception):
    """The HTTP client went away; its generations were cancelled."""


def _was_cancelled(fut: asyncio.Future) -> bool:
    """True for a cancelled future, including a cancelled gather(): that one ends with CancelledError set
    as its exception rather than in the cancelled state, so result() would raise it."""
    return fut.cancelled() or isinstance(fut.exception(), asyncio.CancelledError)


class _Choice:
    """Accumulates one choice's events into the non-streamed response's choice."""

    def __init__(self):
        self.text: list[str] = []
        self.tokens: list[str] = []
        self.logprobs: list[float | None] = []
        self.top: list[dict | None] = []
        self.offsets: list[int] = []
        self.finish_reason: str | None = None

    def add(self, ev: TokenEvent) -> None:
        self.text.append(ev.text)
        self.tokens += ev.token_texts
        self.logprobs += ev.logprobs
        self.top += ev.top_logprobs if ev.top_logprobs is not None else [None] * len(ev.token_texts)
        self.offsets += ev.text_offset
        self.finish_reason = ev.finish_reason or self.finish_reason

    def to_dict(self, index: int, with_logprobs: bool) -> dict:
        lp = None
        if with_logprobs:
            lp = {"tokens": self.tokens, "token_logprobs": self.logprobs,
                  "top_logprobs": self.top if any(t is not None for t in self.top) else None,
                  "text_offset": self.offsets}
        return {"text": "".join(self.text), "index": index, "logprobs": lp, "finish_reason": self.finish_reason}


def _event_logprobs(ev: TokenEvent, with_logprobs: bool) -> dict | None:
    if not with_logprobs:
        return None
    return {"tokens": ev.token_texts, "token_logprobs": ev.logprobs, "top_logprobs": ev.top_logprobs,
            "text_offset": ev.text_offset}


def _join_logprobs(a: dict, b: dict) -> dict:
    """Two events' logprobs (parallel lists, as _event_logprobs) as one."""
    def tops(lp):
        return lp["top_logprobs"] if lp["top_logprobs"] is not None else [None] * len(lp["tokens"])
    both_none = a["top_logprobs"] is None and b["top_logprobs"] is None
    return {"tokens": a["tokens"] + b["tokens"], "token_logprobs": a["token_logprobs"] + b["token_logprobs"],
            "top_logprobs": None if both_none else tops(a) + tops(b), "text_offset": a["text_offset"] + b["text_offset"]}


def _usage(handles) -> dict:
    prompt = sum(h.usage.prompt_tokens for h in handles)
    completion = sum(h.usage.completion_tokens for h in handles)
    cached = sum(h.usage.cached_tokens for h in handles)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class CompletionService:
    """Turns validated requests into engine work; one instance per server."""

    def __init__(self, engine, model_name: str, max_concurrent: int = 64, max_queue: int = 256,
                 metrics: Metrics | None = None, chat_template: str | None = None, inspector=None):
        """inspector: what /v1/inspect reads (gpt3lab.inspector.Inspector over the engine's model; serve/cli.py
        builds both); None: the inspect routes answer 404."""
        self.engine = engine
        self.inspector = inspector
        self.chat_template = chat_template          # None: gpt3lab.chat's plain default for base models
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self.metrics = metrics or Metrics()
        self.created = int(time.time())
        self._slots: asyncio.Semaphore | None = None    # made lazily inside the server's event loop
        self._inspect_lock: asyncio.Lock | None = None
        self.trained_task: str | None = None        # the priming task the checkpoint says it learnt (serve/cli)

    # ---- models and tokenizer ---------------------------------------------------------------
    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "gpt3lab",
                "max_model_len": self.engine.context}

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ServeError(404, f"The model `{name}` does not exist; this server serves `{self.model_name}` "
                                  f"(see GET /v1/models)", param="model", code="model_not_found")

    def tokenize(self, req: TokenizeRequest) -> dict:
        self.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise ServeError(400, "give either prompt (a text) or messages (rendered by the chat template)",
                             param="prompt")
        if req.messages is None:
            ids = self.tokenizer.encode(req.prompt)
            return {"tokens": ids, "count": len(ids), "max_model_len": self.engine.context}
        from gpt3lab.chat import render
        from gpt3lab.errors import DataError
        try:
            text = render([{"role": m.role, "content": m.text()} for m in req.messages], self.chat_template)
        except DataError as e:
            raise ServeError(400, str(e), param="messages") from None
        ids = self.tokenizer.encode(text)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.engine.context, "prompt": text}

    def detokenize(self, req: DetokenizeRequest) -> dict:
        self.check_model(req.model)
        check_token_ids(req.tokens, self.tokenizer.vocab_size, "tokens")
        return {"prompt": self.tokenizer.decode(req.tokens)}

    def tokenizer_info(self) -> dict:
        """What lm-eval's `remote` tokenizer backend reads (it probes for `eos_token`)."""
        eot = self.tokenizer.decode([self.tokenizer.eot_id])
        return {"eos_token": eot, "bos_token": eot, "pad_token": None, "vocab_size": self.tokenizer.vocab_size,
                "model_max_length": self.engine.context, "tokenizer_class": "gpt3lab"}

    # ---- look inside ------------------------------------------------------------------------------
    async def inspect(self, req: InspectRequest) -> dict:
        """POST /v1/inspect: probabilities and attention for one prompt (gpt3lab.inspect), floats to 4 places.

        A separate read-only forward pass through the inspector (never the model itself), in a worker
        thread so the event loop keeps streaming; inspections run one at a time (the lock), the engine keeps
        decoding.
        """
        self.check_model(req.model)
        if self._inspect_lock is None:
            self._inspect_lock = asyncio.Lock()
        async with self._inspect_lock:
            try:
                info = await asyncio.to_thread(self._inspect_all, self._look(), req)
            except InvalidRequestError as e:      # inspect.InspectError and the sampling checks
                raise ServeError(400, str(e), param=e.param, code=e.code) from None
        return {"model": self.model_name, **info}

    def _look(self):
        if self.inspector is None:
            raise ServeError(404, "this server was started without an inspector; /v1/inspect is not available")
        return self.inspector

    def _inspect_all(self, look, req: InspectRequest) -> dict:
        prompt, dropped = req.prompt, None
        if req.truncate:            # the last tokens that fit, as a sliding window keeps them
            prompt, dropped = look.last_tokens(prompt)
        info = look.inspect(prompt, top_k=req.top_k, layers=req.layers if req.attention else [], decimals=4)
        if req.lens:
            lens = look.lens(prompt, top_k=req.lens_top_k, decimals=4)
            info["lens"] = {k: lens[k] for k in ("rows", "norms", "cells")}
        if req.step is not None:
            s = req.step
            info["step"] = look.next_step(prompt, temperature=s.temperature, top_k=s.top_k or None,
                                          top_p=s.top_p, seed=s.seed, show=s.show)
        if req.forward is not None:
            info["forward"] = look.forward_pass(prompt, req.forward.position, top_k=req.forward.top_k, decimals=4)
        if dropped is not None:
            info["dropped"] = dropped
        return info

    def priming_info(self) -> dict:
        """GET /v1/inspect/priming: the task names and the served model's own task (None: it names none)."""
        return {"tasks": self._look().priming_tasks(), "trained_for": self.trained_task}

    async def priming(self, req) -> dict:
        """POST /v1/inspect/priming: the harness's metric vs k for one built-in task (the inspector)."""
        self.check_model(req.model)
        if self._inspect_lock is None:
            self._inspect_lock = asyncio.Lock()
        async with self._inspect_lock:
            try:
                out = await asyncio.to_thread(self._look().priming, req.task, req.shots, req.n, req.seed)
            except InvalidRequestError as e:      # inspect.InspectError
                raise ServeError(400, str(e), param=e.param, code=e.code) from None
            except UserError as e:          # e.g. more examples asked for than the task's pool holds
                raise ServeError(400, str(e), param="shots") from None
        return {"model": self.model_name, **out}

    # ---- request -> engine inputs -----------------------------------------------------------
    def prompts(self, prompt) -> list[list[int]]:
        """The four accepted prompt shapes -> a list of token-id prompts (an empty text -> <|endoftext|>)."""
        if isinstance(prompt, str):
            prompt = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        out = []
        for p in prompt:
            ids = (self.tokenizer.encode(p) or [self.tokenizer.eot_id]) if isinstance(p, str) else list(p)
            check_token_ids(ids, self.tokenizer.vocab_size)
            out.append(ids)
        return out

    def prepare(self, req: CompletionRequest) -> tuple[list[list[int]], SamplingParams]:
        """The request's prompts and params, checked by SamplingParams.validate plus the HTTP-only rules
        (model name, suffix, streaming with best_of, choices per request)."""
        self.check_model(req.model)
        if req.suffix:
            raise ServeError(400, "suffix is not supported: gpt3lab models are left-to-right only (no insertion); "
                                  "drop the `suffix` field", param="suffix", code="unsupported_parameter")
        prompts = self.prompts(req.prompt)
        opt = lambda v, default: default if v is None else v      # noqa: E731  JSON null = the default
        params = SamplingParams(
            max_tokens=opt(req.max_tokens, 16), temperature=opt(req.temperature, 1.0), top_p=opt(req.top_p, 1.0),
            top_k=opt(req.top_k, 0), n=opt(req.n, 1), best_of=req.best_of,
            presence_penalty=opt(req.presence_penalty, 0.0), frequency_penalty=opt(req.frequency_penalty, 0.0),
            logit_bias={token_id_key(k): v for k, v in (req.logit_bias or {}).items()},
            seed=None if req.seed is None else req.seed % 2 ** 63,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
            logprobs=req.logprobs, echo=bool(req.echo), sliding_window=bool(req.sliding_window))
        for ids in prompts:
            best_of = params.validate(self.tokenizer.vocab_size, self.engine.context, len(ids))
        if req.stream and best_of > params.n:
            raise ServeError(400, "best_of > n cannot be streamed (the best choices are known only at the end); "
                                  "set stream=false or best_of=n", param="best_of")
        if len(prompts) * best_of > MAX_CHOICES:
            raise ServeError(400, f"{len(prompts)} prompts x {best_of} choices exceeds the limit of "
                                  f"{MAX_CHOICES} per request; split the request", param="n")
        return prompts, params

    # ---- admission ------------------------------------------------------------------------------
    async def _race(self, aw, is_disconnected: Disconnected):
        """Await `aw`, but cancel it and raise ClientDisconnected if the client goes away first."""
        task = asyncio.ensure_future(aw)
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if is_disconnected is not None and await is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if _was_cancelled(task):
                    raise ClientDisconnected()
                # it finished while we checked (e.g. a slot was acquired): hand the result on, so a
                # slot is never held by nobody; the next disconnect check sees the client gone
                return task.result()

    async def _acquire(self, is_disconnected: Disconnected) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        m = self.metrics
        if not self._slots.locked():
            # a free slot is taken at once (acquire does not suspend), so it never counts as queued: raced
            # through a task, a request holding a slot would still count as waiting for a loop turn, and a
            # second request arriving then got a 429 although the queue was empty
            await self._slots.acquire()
            m.running += 1
            return
        if m.waiting >= self.max_queue:
            raise QueueFullError(f"the server is at capacity ({self.max_concurrent} running, {m.waiting} queued); "
                                 f"retry later")
        m.waiting += 1
        try:
            await self._race(self._slots.acquire(), is_disconnected)
        finally:
            m.waiting -= 1
        m.running += 1

    def _release(self) -> None:
        self.metrics.running -= 1
        self._slots.release()

    def _submit(self, prompts: list[list[int]], params: SamplingParams, rid: str) -> list:
        handles = []
        try:
            for i, ids in enumerate(prompts):
                handles.append(self.engine.submit(ids, params, request_id=f"{rid}-{i}"))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return handles

    def _account(self, usage: dict, t0: float) -> None:
        note_usage(usage)                                   # the request's access-log line
        self.metrics.tokens(usage["prompt_tokens"], usage["completion_tokens"],
                            usage["prompt_tokens_details"]["cached_tokens"])
        self.metrics.observe(latency=time.perf_counter() - t0)

    # ---- non-streamed ---------------------------------------------------------------------------
    async def complete(self, req: CompletionRequest, is_disconnected: Disconnected = None) -> dict:
        """The whole response body of a non-streamed request."""
        prompts, params = await asyncio.to_thread(self.prepare, req)     # tokenizing: off the event loop
        t0, rid = time.perf_counter(), f"cmpl-{uuid.uuid4().hex}"
        await self._acquire(is_disconnected)
        handles, first = [], []
        try:
            handles = self._submit(prompts, params, rid)
            per_prompt = await self._race(asyncio.gather(*(self._collect(h, params.n, first) for h in handles)),
                                          is_disconnected)
        except BaseException as e:     # disconnect, shutdown or an engine error: stop every choice
            if isinstance(e, ClientDisconnected):
                self.metrics.cancelled += 1
            for h in handles:
                h.cancel()
            raise
        finally:
            self._release()
        with_lp = params.logprobs is not None
        choices = [c.to_dict(i * params.n + j, with_lp) for i, cs in enumerate(per_prompt) for j, c in enumerate(cs)]
        usage = _usage(handles)
        self._account(usage, t0)
        if first:
            self.metrics.observe(ttft=first[0] - t0)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.model_name,
                "choices": choices, "usage": usage}

    async def _collect(self, handle, n: int, first: list) -> list[_Choice]:
        choices = [_Choice() for _ in range(n)]
        try:
            async for ev in handle:
                if not first and ev.tokens:
                    first.append(time.perf_counter())
                choices[ev.index].add(ev)
        except EngineError as e:
            raise ServeError.from_engine(e) from None
        return choices

    # ---- streamed -------------------------------------------------------------------------------
    async def open_stream(self, req: CompletionRequest, is_disconnected: Disconnected = None,
                          stream_cls: type | None = None) -> "CompletionStream":
        """Validate, take a slot and submit; errors here still become a plain HTTP error response."""
        stream_cls = stream_cls or CompletionStream
        prompts, params = await asyncio.to_thread(self.prepare, req)     # tokenizing: off the event loop
        t0, rid = time.perf_counter(), f"{stream_cls.ID_PREFIX}-{uuid.uuid4().hex}"
        await self._acquire(is_disconnected)
        try:
            handles = self._submit(prompts, params, rid)
        except BaseException:
            self._release()
            raise
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return stream_cls(self, rid, handles, params, include_usage, t0)

    # ---- chat: template -> the completion path above -> chat shape --------------------------------
    async def chat_request(self, req: ChatCompletionRequest) -> CompletionRequest:
        """The CompletionRequest a chat request amounts to: the rendered messages as prompt tokens.

        Rendering and tokenizing run in a worker thread (as inspect does): a slow template or a huge list
        of messages never stalls the event loop, so /health, streams and SIGTERM stay served meanwhile."""
        from gpt3lab.chat import default_stop

        self.check_model(req.model)
        if req.top_logprobs and not req.logprobs:
            raise ServeError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        ids = await asyncio.to_thread(self._chat_prompt, req.messages)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        # the template's own stop strings apply when the request names none (a request's list replaces them)
        stop = ([req.stop] if isinstance(req.stop, str) else list(req.stop or [])) or default_stop(self.chat_template)
        fields = req.model_dump(exclude={"messages", "max_tokens", "max_completion_tokens", "logprobs",
                                         "top_logprobs", "stop", "stream_options"})
        # already validated by both schemas' rules; model_construct keeps the template's extra stop strings
        return CompletionRequest.model_construct(
            **fields, prompt=ids, stop=stop, stream_options=req.stream_options,
            max_tokens=max(self.engine.context - len(ids), 1) if max_tokens is None else max_tokens,
            logprobs=(req.top_logprobs or 0) if req.logprobs else None, echo=False, suffix=None, best_of=None)

    def _chat_prompt(self, messages) -> list[int]:
        """Token ids of the rendered messages (chat.render's time and size bounds; typed <|endoftext|> is text)."""
        from gpt3lab import chat
        from gpt3lab.errors import DataError

        try:
            text = chat.render([{"role": m.role, "content": m.text()} for m in messages], self.chat_template)
        except DataError as e:
            raise ServeError(400, str(e), param="messages") from None
        return chat.encode(self.tokenizer, text) or [self.tokenizer.eot_id]

    async def chat(self, req: ChatCompletionRequest, is_disconnected: Disconnected = None) -> dict:
        """The whole response body of a non-streamed chat request."""
        body = await self.complete(await self.chat_request(req), is_disconnected)
        choices = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                    "logprobs": chat_logprobs(c["logprobs"]), "finish_reason": c["finish_reason"]}
                   for c in body["choices"]]
        return {**body, "id": "chatcmpl-" + body["id"].removeprefix("cmpl-"), "object": "chat.completion",
                "choices": choices}

    async def open_chat_stream(self, req: ChatCompletionRequest, is_disconnected: Disconnected = None):
        return await self.open_stream(await self.chat_request(req), is_disconnected, ChatStream)


def chat_logprobs(lp: dict | None) -> dict | None:
    """Completion logprobs (parallel lists) -> chat logprobs ({"content": [per-token objects]})."""
    if lp is None:
        return None
    tops = lp["top_logprobs"] or [None] * len(lp["tokens"])
    return {"content": [
        {"token": t, "logprob": p, "bytes": list(t.encode("utf-8")),
         "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode("utf-8"))} for k, v in (top or {}).items()]}
        for t, p, top in zip(lp["tokens"], lp["token_logprobs"], tops)]}


class CompletionStream:
    """Server-sent events of one streamed request; close() cancels unfinished generations and frees the slot."""

    ID_PREFIX, OBJECT = "cmpl", "text_completion"

    def __init__(self, service: CompletionService, rid: str, handles: list, params: SamplingParams,
                 include_usage: bool, t0: float):
        self.service, self.rid, self.handles, self.params = service, rid, handles, params
        self.include_usage, self.t0 = include_usage, t0
        self.finished = False
        self._closed = False

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {"id": self.rid, "object": self.OBJECT, "created": int(time.time()),
                "model": self.service.model_name, "choices": [self._shape(c) for c in choices]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    def _shape(self, choice: dict) -> dict:
        return choice

    def _hold(self, choice: dict) -> dict | None:
        """The choice to send now, or None to send nothing yet (completions send every token event)."""
        return choice

    async def _merged(self) -> AsyncIterator[tuple[int, TokenEvent]]:
        """Events of all prompts' handles as they come: (prompt index, event)."""
        q: asyncio.Queue = asyncio.Queue()

        async def pump(i, h):
            try:
                async for ev in h:
                    await q.put((i, ev))
            except BaseException as e:   # forwarded to the reader, which re-raises it
                await q.put((i, e))
            finally:
                await q.put((i, None))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(self.handles)]
        try:
            live = len(tasks)
            while live:
                i, item = await q.get()
                if item is None:
                    live -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        with_lp, n, first = self.params.logprobs is not None, self.params.n, True
        try:
            async for i, ev in self._merged():
                if not (ev.text or ev.tokens or ev.finish_reason):
                    continue
                if first and ev.tokens:
                    self.service.metrics.observe(ttft=time.perf_counter() - self.t0)
                    first = False
                c = self._hold({"text": ev.text, "index": i * n + ev.index,
                                "logprobs": _event_logprobs(ev, with_lp), "finish_reason": ev.finish_reason})
                if c is not None:
                    yield self._chunk([c])
        except EngineError as e:
            yield f"data: {json.dumps(ServeError.from_engine(e).body())}\n\n"
            return
        self.finished = True
        usage = _usage(self.handles)
        self.service._account(usage, self.t0)
        if self.include_usage:
            yield self._chunk([], usage)
        yield "data: [DONE]\n\n"

    async def close(self) -> None:
        """Idempotent; called by the HTTP layer when the response ends for any reason."""
        if self._closed:
            return
        self._closed = True
        if not self.finished:
            self.service.metrics.cancelled += 1
            for h in self.handles:
                h.cancel()
        self.service._release()


class ChatStream(CompletionStream):
    """The same events as chat.completion.chunk objects: each choice's first delta carries the role."""

    ID_PREFIX, OBJECT = "chatcmpl", "chat.completion.chunk"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started: set[int] = set()
        self._pending: dict[int, dict] = {}       # logprobs of held-back tokens, per choice

    def _hold(self, c: dict) -> dict | None:
        """No chunk without text: tokens held back (a stop string may be starting) send nothing; their
        logprobs go out with the next chunk of that choice. A last chunk without text has an empty delta."""
        pending = self._pending.pop(c["index"], None)
        if pending is not None and c["logprobs"] is not None:
            c = {**c, "logprobs": _join_logprobs(pending, c["logprobs"])}
        if c["text"] or c["finish_reason"]:
            return c
        if c["logprobs"] is not None:
            self._pending[c["index"]] = c["logprobs"]
        return None

    def _shape(self, c: dict) -> dict:
        first = c["index"] not in self._started
        delta = {"content": c["text"]} if c["text"] else {}
        delta = {"role": "assistant", **delta} if first else delta
        self._started.add(c["index"])
        return {"index": c["index"], "delta": delta, "logprobs": chat_logprobs(c["logprobs"]),
                "finish_reason": c["finish_reason"]}
