"""`gpt3lab serve CHECKPOINT_DIR`: the OpenAI-compatible Completions server over the inference engine.

Binds 127.0.0.1 unless --host says otherwise; API keys come from --api-key (repeatable), --api-key-file
(one per line; not visible in `ps`) or the GPT3LAB_API_KEY environment variable (comma-separated); an empty
key is refused. SIGTERM/SIGINT stop accepting connections, let in-flight requests finish for up to
--shutdown-timeout seconds, cancel the rest, then stop the engine.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from gpt3lab.argtypes import add_quantize_argument, int_range, nonneg_float, positive_float, positive_int
from gpt3lab.devices import DEVICE_HELP, resolve_device
from gpt3lab.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="checkpoint or run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int_range(0, 65535), default=8000, help="port (0 = any free port; the URL is printed)")
    p.add_argument("--api-key", action="append", default=None,
                   help="require `Authorization: Bearer KEY` (repeatable; visible in `ps`: prefer --api-key-file "
                        "or $GPT3LAB_API_KEY, comma-separated; default: none)")
    p.add_argument("--api-key-file", metavar="FILE", help="read the API key(s) from FILE, one per line")
    p.add_argument("--model-name", default=None,
                   help="model id clients send (default: the directory's name; the run's for RUN/adapter)")
    p.add_argument("--lora-modules", nargs="+", action="extend", default=[], metavar="NAME=ADAPTER_DIR",
                   help="also serve these LoRA adapters of the base model, each under its NAME (a request's "
                        "`model` picks one; GET /v1/models lists them)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_quantize_argument(p)
    p.add_argument("--max-concurrent", type=positive_int, default=64, help="requests generating at once")
    p.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting for a slot before 429s")
    p.add_argument("--kv-memory", default="1GiB",
                   help="KV cache budget of the engine, e.g. 512MiB, 2GiB or bytes (default 1GiB)")
    p.add_argument("--max-running", type=positive_int, default=64, help="sequences the engine decodes at once")
    p.add_argument("--max-batch-tokens", type=positive_int, default=512,
                   help="tokens per engine forward pass (decode rows + prompt chunks)")
    p.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV cache block")
    p.add_argument("--no-prefix-caching", action="store_true", help="do not reuse cached prompt prefixes")
    p.add_argument("--max-body-bytes", type=positive_int, default=4 * 1024 * 1024, help="request body limit (413 above)")
    p.add_argument("--body-timeout", type=positive_float, default=10.0,
                   help="seconds a client gets to send the whole request body (408 after that)")
    p.add_argument("--shutdown-timeout", type=nonneg_float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGTERM before they are cancelled")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true",
                   help="do not print the one line per request (method, route, status, tokens, time) on stderr")
    p.add_argument("--chat-template", metavar="FILE", default=None,
                   help="Jinja chat template for /v1/chat/completions (default: the checkpoint's, else a plain "
                        "User:/Assistant: transcript)")
    from gpt3lab.generate.cli import add_tokenizer_override
    add_tokenizer_override(p)


def api_keys(flag: list[str] | None, key_file: str | None = None) -> list[str]:
    """--api-key values and the lines of --api-key-file, else $GPT3LAB_API_KEY split on commas.

    An empty --api-key or an empty key file is an error: it would silently turn authentication off.
    """
    if flag and any(not k.strip() for k in flag):
        raise ConfigError("--api-key '' is empty and would disable authentication; pass a non-empty key, or "
                          "drop --api-key to serve without one")
    keys = [k.strip() for k in flag or []]
    if key_file is not None:
        try:
            lines = [k.strip() for k in Path(key_file).read_text().splitlines() if k.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--api-key-file {key_file}: cannot read it ({e.__class__.__name__})") from None
        if not lines:
            raise ConfigError(f"--api-key-file {key_file} holds no key; write one key per line")
        keys += lines
    if keys:
        return keys
    return [k.strip() for k in os.environ.get("GPT3LAB_API_KEY", "").split(",") if k.strip()]


def check_args(args) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} must be in 0..65535")
    for name in ("max_concurrent", "max_queue", "max_body_bytes", "max_running", "max_batch_tokens", "block_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    parse_bytes(args.kv_memory)
    api_keys(args.api_key, args.api_key_file)


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def parse_bytes(text: str) -> int:
    """'512MiB' / '2GB' / '1000000' -> bytes (>= 1); ConfigError naming the value otherwise."""
    s = str(text).strip().lower()
    num = s.rstrip("kmgib")
    try:
        n = int(float(num) * _UNITS[s[len(num):]])
    except (ValueError, KeyError):
        n = 0
    if n < 1:
        raise ConfigError(f"--kv-memory {text!r} is not a size; use e.g. 512MiB, 2GiB or a byte count")
    return n


def engine_config(args):
    """The serve flags that configure the engine, as an EngineConfig."""
    from gpt3lab.generate.engine import EngineConfig
    return EngineConfig(block_size=args.block_size, kv_memory_bytes=parse_bytes(args.kv_memory),
                        max_batch_tokens=args.max_batch_tokens, max_running=args.max_running,
                        max_waiting=args.max_queue + args.max_concurrent,
                        enable_prefix_caching=not args.no_prefix_caching)


def build_engine(checkpoint: str, device: str, config=None, tokenizer=None, quantize: str = "none",
                 compile=False):
    """(engine, inspector, path, model): the checkpoint, run dir, LoRA adapter dir or hub id loaded onto `device`
    behind the engine, and the read-only inspector over the same model that /v1/inspect uses (tokenizer: an
    override spec, e.g. "gpt2"; quantize: see gpt3lab.model.quant; compile: the decode step,
    gpt3lab.generate.core). The model goes only to the adapters' engines (--lora-modules), never to the service."""
    from gpt3lab import load
    from gpt3lab.generate.engine import Engine
    from gpt3lab.inspector import Inspector
    model, tok = load(checkpoint, device=resolve_device(device), tokenizer=tokenizer, quantize=quantize,
                      compile=compile)
    return Engine(model, tok, config), Inspector(model, tok), Path(checkpoint).resolve(), model


def serve_app(app, host: str, port: int, log_level: str = "warning", shutdown_timeout: float = 30.0,
              announce=print) -> None:
    """Run `app` under uvicorn until SIGTERM/SIGINT; announce(url) once the socket is listening."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and self.servers:
                h, p = self.servers[0].sockets[0].getsockname()[:2]
                announce(f"gpt3lab serve: listening on http://{'[' + h + ']' if ':' in h else h}:{p}")

    # idle keep-alive connections are closed after 5 s; slow bodies are cut by the app's body timeout
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout, lifespan="on", timeout_keep_alive=5,
                            h11_max_incomplete_event_size=64 * 1024)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it caught once it has shut down; a no-op handler turns that
        # into a normal return, so a graceful SIGTERM exits 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    Server(config).run()


def chat_template(args) -> str | None:
    """--chat-template FILE, else the template stored in the checkpoint, else None (the default); checked
    to compile here, at start-up, so a broken template is one error now, not a 400 on every chat request."""
    from gpt3lab.chat import check_template
    from gpt3lab.checkpoint import chat_template_of

    if getattr(args, "chat_template", None):
        try:
            template = Path(args.chat_template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--chat-template {args.chat_template}: cannot read it ({e})") from None
        where = f"--chat-template {args.chat_template}"
    else:
        template, where = chat_template_of(args.checkpoint), f"the chat_template of {args.checkpoint}"
    check_template(template, where)
    return template


def serve_lora_modules(args, base_model, engine, service, adapters: dict, template, keys: list[str]):
    """The ASGI app serving the base model and each adapter (an engine each, base weights shared)."""
    from gpt3lab.generate.engine import Engine
    from gpt3lab.serve.app import create_app
    from gpt3lab.serve.lora_modules import ModelRouter, adapter_model
    from gpt3lab.serve.service import CompletionService

    engines = {n: Engine(adapter_model(base_model, p), engine.tokenizer, engine_config(args))
               for n, p in adapters.items()}
    services = {n: CompletionService(e, n, max_concurrent=args.max_concurrent, max_queue=args.max_queue,
                                     chat_template=template) for n, e in engines.items()}

    def shutdown():
        for e in (engine, *engines.values()):
            e.shutdown(cancel_running=True)

    kw = dict(body_timeout=args.body_timeout, access_log=not args.no_access_log)
    apps = {n: create_app(s, keys, args.max_body_bytes, peers=[service, *(p for p in services.values() if p is not s)],
                          **kw) for n, s in services.items()}
    apps[service.model_name] = create_app(service, keys, args.max_body_bytes, on_shutdown=shutdown,
                                          peers=list(services.values()), **kw)
    router = ModelRouter(apps, service.model_name, args.max_body_bytes, args.body_timeout)
    router.engines = engines            # the adapters' engines (tests, introspection)
    return router


def run(args) -> int:
    from gpt3lab.serve.app import create_app
    from gpt3lab.serve.service import CompletionService

    check_args(args)
    template = chat_template(args)                 # before the model loads: a bad template fails fast
    engine, inspector, ckpt, model = build_engine(args.checkpoint, args.device, engine_config(args),
                                                  getattr(args, "tokenizer", None), args.quantize,
                                                  getattr(args, "compile", False))
    from gpt3lab.serve.lora_modules import default_model_name, parse_lora_modules

    name = args.model_name or default_model_name(ckpt)   # the run, checkpoint or HF dir the user named
    adapters = parse_lora_modules(args.lora_modules, name)
    if adapters and args.quantize != "none":
        raise ConfigError("--lora-modules needs the base model's own weights: drop --quantize")
    service = CompletionService(engine, name, max_concurrent=args.max_concurrent, max_queue=args.max_queue,
                                chat_template=template, inspector=inspector)
    from gpt3lab.priming_demo import trained_task
    service.trained_task = trained_task(ckpt)
    keys = api_keys(args.api_key, args.api_key_file)
    app = serve_lora_modules(args, model, engine, service, adapters, template, keys) if adapters else create_app(
        service, keys, args.max_body_bytes, on_shutdown=lambda: engine.shutdown(cancel_running=True),
        body_timeout=args.body_timeout, access_log=not args.no_access_log)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        print(f"gpt3lab serve: warning: listening on {args.host} without an API key", file=sys.stderr)
    serve_app(app, args.host, args.port, args.log_level, args.shutdown_timeout,
              announce=lambda line: print(f"{line}  (model {name!r}"
                                          + "".join(f", {n!r}" for n in adapters) + ")", flush=True))
    return 0
