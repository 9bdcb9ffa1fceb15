"""HTTP routes of `gpt3lab serve` (FastAPI). Routes only: the work is in service.py.

Every error leaves in OpenAI's shape {"error": {"message", "type", "param", "code"}}: FastAPI's 422
validation body becomes a 400 naming the offending field; 404/405 keep their status.

The two generation routes parse and validate their (up to --max-body-bytes) JSON body in a worker thread
(`parsed_body`), not on the event loop: 120k chat messages take the better part of a second to validate,
and the loop serves every other client. Their body schemas are still in /openapi.json (`BODY_MODELS`).
"""
from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt3lab.generate.api import EngineError
from gpt3lab.serve.protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                                    CompletionResponse, DetokenizeRequest, DetokenizeResponse,
                                    ErrorResponse, InspectRequest, InspectResponse, ModelCard, ModelList,
                                    PrimingInfo, PrimingRequest, PrimingResponse,
                                    TokenizeRequest, TokenizeResponse)
from gpt3lab.serve.service import ClientDisconnected, CompletionService, CompletionStream, ServeError

log = logging.getLogger("gpt3lab.serve")
STATIC = Path(__file__).parent / "static"
ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/tokenize",
          "/detokenize", "/tokenizer_info", "/v1/inspect", "/v1/inspect/priming", "/favicon.ico"}
OPEN_PATHS = {"/", "/health", "/openapi.json", "/docs", "/favicon.ico"}   # no API key needed
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          413: {"model": ErrorResponse}, 429: {"model": ErrorResponse}}


def route_label(path: str) -> str:
    """The metrics label of a request path: its route template, never the raw path (a client-chosen
    path would forge label text and create a new series per request)."""
    if path in ROUTES:
        return path
    return "/v1/models/{model_id}" if path.startswith("/v1/models/") else "other"


def _error(status: int, message: str, type: str = "invalid_request_error", param=None, code=None) -> JSONResponse:
    return JSONResponse(ServeError(status, message, type, param, code).body(), status_code=status)


async def read_body(receive, limit: int) -> bytes:
    """A request's body from ASGI `receive`, read to its end or until it exceeds `limit` bytes (then the caller
    sees len(body) > limit and refuses it; the caller also bounds the time)."""
    chunks, size, more = [], 0, True
    while more and size <= limit:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        more = msg.get("more_body", False)
    return b"".join(chunks)


def replaying(body: bytes, receive):
    """An ASGI receive() that hands out `body` once, then defers to the server's (so `http.disconnect` arrives)."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


class Guard:
    """ASGI middleware: API-key check (Bearer token) and a request-body size limit, before any routing.

    The body is read here (at most `max_body_bytes`) and replayed to the app; later receive() calls go
    to the server, so the app still sees `http.disconnect`.
    """

    def __init__(self, app, api_keys: list[str], max_body_bytes: int, metrics=None, body_timeout: float = 10.0):
        self.app, self.api_keys, self.max_body_bytes = app, [k.encode() for k in api_keys], max_body_bytes
        self.metrics, self.body_timeout = metrics, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.metrics is not None:
            send = self._counting(scope, send)
        if self.api_keys and scope["path"] not in OPEN_PATHS and not scope["path"].startswith("/static"):
            if not self._authorized(scope):
                return await _error(401, "Incorrect or missing API key: send `Authorization: Bearer KEY` with a key "
                                         "given to `gpt3lab serve --api-key` (or GPT3LAB_API_KEY)",
                                    code="invalid_api_key")(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        try:
            body = await asyncio.wait_for(read_body(receive, self.max_body_bytes), self.body_timeout)
        except asyncio.TimeoutError:
            return await _error(408, f"request body not received within {self.body_timeout:g} s; send it at once "
                                     f"(or raise `gpt3lab serve --body-timeout`)",
                                code="request_timeout")(scope, receive, send)
        if len(body) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        return await self.app(scope, replaying(body, receive), send)

    def _counting(self, scope, send):
        route = route_label(scope["path"])

        async def counted(msg):
            if msg["type"] == "http.response.start":
                self.metrics.request_done(route, msg["status"])
            await send(msg)
        return counted

    def _authorized(self, scope) -> bool:
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        return scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), k) for k in self.api_keys)

    async def _too_large(self, scope, receive, send):
        await _error(413, f"request body exceeds the limit of {self.max_body_bytes} bytes; send a smaller request "
                          f"or raise `gpt3lab serve --max-body-bytes`", code="request_too_large")(scope, receive, send)


class SSEResponse(StreamingResponse):
    """A streamed completion that always closes its CompletionStream (cancelling work if the client left)."""

    def __init__(self, stream: CompletionStream):
        super().__init__(stream.__aiter__(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.stream = stream

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except OSError:          # the client went away mid-send
            pass
        finally:
            await self.body_iterator.aclose()
            await self.stream.close()


BODY_MODELS = (CompletionRequest, ChatCompletionRequest)    # bodies validated by parsed_body, off the loop


def body_doc(model: type[BaseModel]) -> dict:
    """openapi_extra that documents `model` as the JSON body of a route validating it with parsed_body."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


async def parsed_body(request: Request, model: type[BaseModel]):
    """The request's JSON body validated as `model` in a worker thread; RequestValidationError (a 400 in
    the usual shape) when it is not JSON or not valid."""
    raw = await request.body()

    def parse():
        try:
            data = json.loads(raw)
        except ValueError as e:       # JSONDecodeError and bad UTF-8
            return [{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error", "input": {},
                     "ctx": {"error": str(e)}}]
        try:
            return model.model_validate(_messages_in_slices(data) if model is ChatCompletionRequest else data)
        except ValidationError as e:
            return [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        except _SliceError as e:
            return e.errors

    out = await asyncio.to_thread(parse)
    if isinstance(out, list):
        raise RequestValidationError(out)
    return out


class _SliceError(Exception):
    def __init__(self, errors: list):
        self.errors = errors


MESSAGE_SLICE = 1000      # messages validated per call: pydantic holds the GIL for a whole call


def _messages_in_slices(data):
    """`data` with a long "messages" list validated MESSAGE_SLICE at a time into ChatMessage objects, so
    the event loop's thread gets the GIL between slices (the model then takes the objects as they are)."""
    from pydantic import TypeAdapter

    from gpt3lab.serve.protocol import ChatMessage

    msgs = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(msgs, list) or len(msgs) <= MESSAGE_SLICE:
        return data
    adapter, checked = TypeAdapter(list[ChatMessage]), []
    for i in range(0, len(msgs), MESSAGE_SLICE):
        try:
            checked += adapter.validate_python(msgs[i:i + MESSAGE_SLICE])
        except ValidationError as e:
            raise _SliceError([{**err, "loc": ("body", "messages", i + err["loc"][0], *err["loc"][1:])}
                               for err in e.errors(include_url=False)]) from None
    return {**data, "messages": checked}


def _openapi_with_bodies(app: FastAPI):
    """app.openapi that adds BODY_MODELS' schemas (their routes take a plain Request) to the components."""
    from pydantic.json_schema import models_json_schema

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            _, defs = models_json_schema([(m, "validation") for m in BODY_MODELS],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        return app.openapi_schema
    return openapi


HINTS = {"prompt": "expected a string, a list of strings, a list of token ids or a list of token-id lists",
         "stop": "expected a non-empty string or a list of at most 4 non-empty strings"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """FastAPI's validation errors -> (one message, the top-level field it is about)."""
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    e = errs[0]
    if e.get("type") == "json_invalid":
        return ("We could not parse the JSON body of your request: send a valid JSON object "
                "(Content-Type: application/json)", None)
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = loc[0] if loc else None
    got = json.dumps(e.get("input"), default=str)[:200]
    if param in HINTS and len([x for x in errs if x.get("loc", ())[1:2] == (param,)]) > 1:
        return f"{param}: {HINTS[param]} (got {got})", param       # a union: every member failed
    tags = {"str", "int", "float", "bool", "list", "dict"}    # union member names pydantic adds to the path
    where = ".".join(x for x in loc if x not in tags and not any(c in x for c in "[]()-")) or param
    return (f"{where}: " if where else "") + f"{e.get('msg', 'invalid value')} (got {got})", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return _error(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error(404, f"Unknown route: {request.method} {request.url.path}", code="not_found")
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ServeError)
    async def _serve(request: Request, exc: ServeError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError):
        return JSONResponse(ServeError.from_engine(exc).body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, "internal server error; see the server log", type="server_error")


def create_app(service: CompletionService, api_keys: list[str] | None = None,
               max_body_bytes: int = 4 * 1024 * 1024, on_shutdown=None, body_timeout: float = 10.0,
               access_log=None, peers=()) -> FastAPI:
    """The ASGI app over `service`. on_shutdown() runs after the server stops taking requests;
    a request body not received within body_timeout seconds gets a 408. access_log: True (stderr) or a
    stream gets one line per request (serve/access_log.py). peers: the services of the other models this
    server serves (LoRA adapters, serve/lora_modules.py), listed by GET /v1/models."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        # as vLLM's server does: the start-up heap (model, engine, libraries) is frozen out of the cyclic GC,
        # whose full collections hold the GIL for time in proportion to every tracked object; a request
        # that allocates a lot (120k chat messages) triggered ~0.8 s pauses of the whole server without this
        gc.collect()
        gc.freeze()
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="gpt3lab", version="0.1.0", lifespan=lifespan, redoc_url=None,
                  description="OpenAI-compatible Completions and Chat Completions APIs over a gpt3lab checkpoint.")
    install_error_handlers(app)
    add_routes(app, service, peers)
    app.openapi = _openapi_with_bodies(app)
    app.add_middleware(Guard, api_keys=list(api_keys or []), max_body_bytes=max_body_bytes,
                       metrics=service.metrics, body_timeout=body_timeout)
    if access_log:                      # outermost: refused (401/413) requests are logged too
        from gpt3lab.serve.access_log import AccessLog
        app.add_middleware(AccessLog, stream=None if access_log is True else access_log)
    return app


def add_routes(app: FastAPI, service: CompletionService, peers=()) -> None:
    m = service.metrics

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.model_name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(m.render(service.engine.stats()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models():
        return {"object": "list", "data": [service.model_card(), *(p.model_card() for p in peers)]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
    async def model(model_id: str):
        service.check_model(model_id)
        return service.model_card()

    @app.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS,
              openapi_extra=body_doc(CompletionRequest))
    async def completions(request: Request):
        body = await parsed_body(request, CompletionRequest)
        try:
            if body.stream:
                return SSEResponse(await service.open_stream(body, request.is_disconnected))
            return JSONResponse(await service.complete(body, request.is_disconnected))
        except ClientDisconnected:
            return _error(499, "client closed the request", code="client_closed")

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS,
              openapi_extra=body_doc(ChatCompletionRequest))
    async def chat_completions(request: Request):
        """Messages rendered by the checkpoint's chat template (a plain default for base models)."""
        body = await parsed_body(request, ChatCompletionRequest)
        try:
            if body.stream:
                return SSEResponse(await service.open_chat_stream(body, request.is_disconnected))
            return JSONResponse(await service.chat(body, request.is_disconnected))
        except ClientDisconnected:
            return _error(499, "client closed the request", code="client_closed")

    @app.post("/v1/inspect", response_model=InspectResponse, responses=ERRORS)
    async def inspect(body: InspectRequest):
        """Look inside: per-token probabilities and attention weights for one prompt (gpt3lab extension)."""
        return JSONResponse(await service.inspect(body))

    @app.post("/v1/inspect/priming", response_model=PrimingResponse, responses=ERRORS)
    async def priming(body: PrimingRequest):
        """Priming: the eval harness's metric at k = 0..K examples in context, for one task (gpt3lab extension)."""
        return JSONResponse(await service.priming(body))

    @app.get("/v1/inspect/priming", response_model=PrimingInfo)
    async def priming_info():
        """The priming tasks, and the one the served checkpoint was trained for, if it says (gpt3lab extension)."""
        return service.priming_info()

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response((STATIC / "favicon.svg").read_bytes(), media_type="image/svg+xml")

    @app.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
    async def tokenize(body: TokenizeRequest):
        return await asyncio.to_thread(service.tokenize, body)     # a 4 MB text takes ~1 s: off the loop

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
    async def detokenize(body: DetokenizeRequest):
        return service.detokenize(body)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        return service.tokenizer_info()

