"""LoRA adapters served by name next to their base model: `gpt3lab serve BASE --lora-modules NAME=ADAPTER_DIR ...`
(vLLM's flag). A request's `model` picks the base or an adapter; GET /v1/models lists them all.

Each adapter runs on a model that shares every base weight tensor with the base model (a copy of the module
tree only, then the adapter's low-rank layers injected), behind an engine of its own: memory grows by the
adapters' own weights and each engine's KV cache budget (--kv-memory), not by another copy of the base.
`ModelRouter` sends each request to the app of the model its JSON body (or /v1/models/ID path) names.
"""
from __future__ import annotations

import asyncio
import copy
import json
import re
from pathlib import Path

from gpt3lab.errors import ConfigError
from gpt3lab.serve.app import read_body, replaying

_NAME = re.compile(r"[A-Za-z0-9][\w.:-]{0,127}")


def default_model_name(path: str | Path) -> str:
    """The model id clients send when --model-name is not given: the run's name for RUN/adapter, RUN/merged,
    RUN/model and RUN/checkpoints/step_N, else the directory's own name."""
    p = Path(path).resolve()
    if p.parent.name == "checkpoints":
        return p.parent.parent.name
    return p.parent.name if p.name in ("adapter", "merged", "model") and p.parent.name else p.name


def parse_lora_modules(specs: list[str] | None, base_name: str) -> dict[str, Path]:
    """NAME=ADAPTER_DIR strings -> {name: dir}; ConfigError naming the bad one."""
    from gpt3lab.adapters import is_adapter_dir

    out: dict[str, Path] = {}
    for spec in specs or []:
        name, eq, path = spec.partition("=")
        if not eq or not _NAME.fullmatch(name) or not path:
            raise ConfigError(f"--lora-modules {spec!r}: expected NAME=ADAPTER_DIR, e.g. shakespeare=runs/ft/adapter "
                              f"(NAME: letters, digits, . _ - :)")
        if name == base_name or name in out:
            raise ConfigError(f"--lora-modules {spec!r}: the name {name!r} is already taken (base model: "
                              f"{base_name!r}); give each adapter its own name")
        p = Path(path)
        if not is_adapter_dir(p) and is_adapter_dir(p / "adapter"):
            p = p / "adapter"                   # a LoRA fine-tune's run dir
        if not is_adapter_dir(p):
            raise ConfigError(f"--lora-modules {spec!r}: {path} is not a LoRA adapter directory (adapter_config.json "
                              f"+ adapter.safetensors, as `gpt3lab finetune --method lora` writes in RUN/adapter)")
        out[name] = p
    return out


def adapter_model(base, adapter_dir: Path):
    """A model running `base` + the adapter of `adapter_dir`, sharing every base tensor with `base`."""
    from gpt3lab.adapters import load_adapter

    shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
    model = copy.deepcopy(base, shared)         # new modules, the same weight tensors
    return load_adapter(model, adapter_dir)     # refuses an adapter trained on another base


class ModelRouter:
    """ASGI app over one app per served model: a POST goes to the app of the model its JSON body names,
    /v1/models/ID to ID's, everything else (and an unknown name, which that app answers with a 404) to the
    base model's. Lifespan events go to the base app, whose shutdown stops every engine."""

    def __init__(self, apps: dict[str, object], base: str, max_body_bytes: int, body_timeout: float = 10.0):
        self.apps, self.base = apps, apps[base]
        self.max_body_bytes, self.body_timeout = max_body_bytes, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.base(scope, receive, send)
        path = scope.get("path", "")
        if path.startswith("/v1/models/"):
            return await self.apps.get(path[len("/v1/models/"):], self.base)(scope, receive, send)
        if scope.get("method") != "POST" or self._declared(scope) > self.max_body_bytes:
            return await self.base(scope, receive, send)           # its Guard answers 413 for a big body
        try:
            body = await asyncio.wait_for(read_body(receive, self.max_body_bytes), self.body_timeout)
        except asyncio.TimeoutError:
            return await self.base(scope, receive, send)           # its Guard times the rest out (408)
        # an over-limit body goes on as read: the target app's Guard answers 413
        return await self.apps.get(_model_of(body), self.base)(scope, replaying(body, receive), send)

    @staticmethod
    def _declared(scope) -> int:
        try:
            return int(dict(scope.get("headers") or []).get(b"content-length", b"0"))
        except ValueError:
            return 0


def _model_of(body: bytes) -> str | None:
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


__all__ = ["ModelRouter", "adapter_model", "default_model_name", "parse_lora_modules"]
