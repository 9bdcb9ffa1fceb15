"""The read-only look inside one served model: what the server's /v1/inspect and /v1/inspect/priming call.

The server holds this object, never the model (tests/test_imports.py): serve/cli.py builds it beside the engine.
It binds gpt3lab.inspect (probabilities, attention, the logit lens, the sampler's step, priming) and
gpt3lab.forward_pass (one token followed through the model) to one model and tokenizer.
"""
from __future__ import annotations

from gpt3lab import inspect as look
from gpt3lab.forward_pass import forward_pass


class Inspector:
    """The read-only look inside one model that the server's /v1/inspect calls (serve/cli.py builds it):
    the server never holds the model itself."""

    InspectError = look.InspectError

    def __init__(self, model, tokenizer):
        self._model, self.tokenizer = model, tokenizer

    def inspect(self, text_or_ids, **kw) -> dict:
        return look.inspect(self._model, self.tokenizer, text_or_ids, **kw)

    def lens(self, text_or_ids, **kw) -> dict:
        return look.lens(self._model, self.tokenizer, text_or_ids, **kw)

    def next_step(self, text_or_ids, **kw) -> dict:
        return look.next_step(self._model, self.tokenizer, text_or_ids, **kw)

    def priming(self, task: str, shots=(0, 1, 2, 4, 8), n: int = 20, seed: int = 0) -> dict:
        return look.priming(self._model, self.tokenizer, task, shots, n, seed)

    def priming_tasks(self) -> list[str]:
        return look.priming_tasks()

    def last_tokens(self, text_or_ids) -> tuple[list[int], int]:
        """The last tokens of a prompt that inspect takes (at most min(MAX_TOKENS, context)), and how many
        were dropped."""
        return look.last_tokens(self.tokenizer, text_or_ids, min(look.MAX_TOKENS, self._model.config.context))

    def forward_pass(self, text_or_ids, position: int | None = None, **kw) -> dict:
        return forward_pass(self._model, self.tokenizer, text_or_ids, position, **kw)
