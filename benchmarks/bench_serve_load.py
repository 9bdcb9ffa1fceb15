"""Load test of `gpt3lab serve` on loopback: C concurrent clients x R requests each, then a disconnect storm.

    python benchmarks/bench_serve_load.py [--clients 64] [--requests 20] [--max-tokens 16] [--checkpoint DIR]

Starts `gpt3lab serve` (the real inference engine) in a subprocess on 127.0.0.1 (a free port) over a
tiny random GPT (or --checkpoint); --serve-args passes engine flags through (e.g. "--max-running 32").
Prints: errors (must be 0), p50/p99 request latency, aggregate completion tokens/s; then C clients
that open a stream and drop it after the first chunk, and the time until running/queued slots are 0.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoint(dest: Path) -> Path:
    import torch

    from gpt3lab.checkpoint import save_checkpoint
    from gpt3lab.config import ModelConfig
    from gpt3lab.model import GPT
    from gpt3lab.tokenizer import Tokenizer
    torch.manual_seed(0)
    tok = Tokenizer.gpt2()
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=128, n_layer=2, d_model=64, n_head=4)
    return save_checkpoint(dest / "tiny", GPT(cfg), cfg, tok)


def start_server(ckpt: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "gpt3lab", "serve", str(ckpt), "--port", "0", "--device", "cpu", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


async def client(http: httpx.AsyncClient, model: str, i: int, n_req: int, max_tokens: int, lat: list, toks: list,
                 errors: list) -> None:
    for j in range(n_req):
        body = {"model": model, "prompt": f"Client {i} request {j}:", "max_tokens": max_tokens,
                "temperature": 0.8, "seed": i * 1000 + j}
        t0 = time.perf_counter()
        try:
            r = await http.post("/v1/completions", json=body)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
                continue
            toks.append(r.json()["usage"]["completion_tokens"])
            lat.append(time.perf_counter() - t0)
        except httpx.HTTPError as e:
            errors.append(repr(e))


async def dropper(http: httpx.AsyncClient, model: str, i: int) -> None:
    body = {"model": model, "prompt": f"Drop {i}", "max_tokens": 100, "temperature": 0.8, "stream": True}
    async with http.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                return                      # leave after the first token: the server must cancel


def gauge(metrics: str, name: str) -> float:
    return sum(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(name + " "))


async def main_async(args, url: str, model: str) -> int:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.time_limit, limits=limits) as http:
        lat, toks, errors = [], [], []
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(http, model, i, args.requests, args.max_tokens, lat, toks,
                                                       errors) for i in range(args.clients))), args.time_limit)
        wall = time.perf_counter() - t0
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
        print(f"requests: {len(lat)} ok, {len(errors)} errors  ({args.clients} clients x {args.requests})")
        for e in errors[:5]:
            print("  error:", e)
        print(f"latency p50 {q[49] * 1000:.0f} ms  p99 {q[98] * 1000:.0f} ms   wall {wall:.1f} s")
        print(f"aggregate completion tokens/s: {sum(toks) / wall:.1f}  ({sum(toks)} tokens)")

        t1 = time.perf_counter()
        await asyncio.gather(*(dropper(http, model, i) for i in range(args.clients)))
        drained = None
        while time.perf_counter() - t1 < 60:
            m = (await http.get("/metrics")).text
            busy = gauge(m, "gpt3lab_requests_running") + gauge(m, "gpt3lab_requests_waiting") + \
                gauge(m, "gpt3lab_engine_running") + gauge(m, "gpt3lab_engine_waiting")
            if busy == 0:
                drained = time.perf_counter() - t1
                break
            await asyncio.sleep(0.05)
        cancelled = gauge(m, "gpt3lab_cancelled_requests_total")
        print(f"disconnect storm: {args.clients} streams dropped after 1 token; "
              f"{'drained in %.2f s' % drained if drained is not None else 'NOT drained in 60 s'}; "
              f"cancelled {cancelled:.0f}")
        ok = (await http.post("/v1/completions", json={"model": model, "prompt": "after", "max_tokens": 4})).status_code
        print(f"request after the storm: HTTP {ok}")
        return 0 if not errors and drained is not None and ok == 200 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole load phase")
    p.add_argument("--serve-args", default="", help="extra `gpt3lab serve` flags, e.g. \"--max-running 32\"")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or tiny_checkpoint(Path(tmp))
        proc, url = start_server(ckpt, args.serve_args.split())
        print(f"server: {url}  engine: gpt3lab Engine {args.serve_args}  checkpoint: {ckpt.name}  "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        try:
            return asyncio.run(main_async(args, url, ckpt.name))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
