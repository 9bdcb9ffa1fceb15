"""One access-log line per request of `gpt3lab serve` (off with --no-access-log):

    gpt3lab serve: 127.0.0.1 "POST /v1/chat/completions" 200 tokens=31+40 0.532s

method and path, status, prompt+completion tokens (for requests that generated), wall time to the end of
the response (a stream's last byte). The service reports a request's token usage with `note_usage`, which
finds the request's record through a context variable the middleware sets.
"""
from __future__ import annotations

import contextvars
import sys
import time

_CURRENT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("gpt3lab_access_record", default=None)


def note_usage(usage: dict) -> None:
    """Called by the service when a request's generation is accounted: its tokens go into the log line."""
    rec = _CURRENT.get()
    if rec is not None:
        rec["prompt"] = rec.get("prompt", 0) + usage["prompt_tokens"]
        rec["completion"] = rec.get("completion", 0) + usage["completion_tokens"]


class AccessLog:
    """ASGI middleware writing one line per HTTP request to `stream` (default stderr) when it ends."""

    def __init__(self, app, stream=None):
        self.app, self.stream = app, stream

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rec: dict = {"status": None}
        token = _CURRENT.set(rec)
        t0 = time.perf_counter()

        async def watched(msg):
            if msg["type"] == "http.response.start":
                rec["status"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, watched)
        finally:
            _CURRENT.reset(token)
            self._write(scope, rec, time.perf_counter() - t0)

    def _write(self, scope, rec: dict, seconds: float) -> None:
        client = (scope.get("client") or ("-",))[0]
        path = scope.get("path", "")
        query = scope.get("query_string", b"")
        target = path + ("?" + query.decode("latin-1") if query else "")
        status = rec["status"] if rec["status"] is not None else "-"     # none: the client left first
        tokens = f" tokens={rec['prompt']}+{rec['completion']}" if "prompt" in rec else ""
        line = f'gpt3lab serve: {client} "{scope.get("method", "")} {target!s:.200}" {status}{tokens} {seconds:.3f}s'
        print(line, file=self.stream or sys.stderr, flush=True)


__all__ = ["AccessLog", "note_usage"]
