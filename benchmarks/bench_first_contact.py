"""Figures for issue 24 (first contact): what serving LoRA adapters by name costs, what the access log costs,
and how much of a cut download is fetched again.

    python benchmarks/bench_first_contact.py [--preset cpu-6l] [--adapters 2] [--requests 300] [--repeats 3]

1. --lora-modules: bytes of weights held for the base + N adapters (tensors counted once, by storage) against
   N+1 full copies, on a random model of --preset's shape with rank-8 adapters on c_attn,c_proj.
2. Access log: median time of a GET /health through the ASGI app (in process, no socket), with and without
   the access-log middleware, the two interleaved run by run (ratios only: the box is shared).
3. Download resume: a local fake hub (tests/hub_fake.py) cuts a 40 MiB safetensors file at 35 MiB; bytes
   fetched in all against the file's size (huggingface_hub resumes from its last whole 10 MiB piece).
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def held_bytes(models) -> int:
    seen, total = set(), 0
    for m in models:
        for t in (*m.parameters(), *m.buffers()):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def lora_memory(preset: str, n: int) -> None:
    from gpt3lab.adapters import save_adapter
    from gpt3lab.checkpoint import save_checkpoint
    from gpt3lab.config import ModelConfig
    from gpt3lab.model import GPT
    from gpt3lab.model.lora import LoRAConfig, fingerprint, inject_lora
    from gpt3lab.presets import get_preset
    from gpt3lab.serve.lora_modules import adapter_model

    cfg = ModelConfig(**get_preset(preset).model)
    with tempfile.TemporaryDirectory() as d:
        base = GPT(cfg).eval()
        ckpt = save_checkpoint(Path(d) / "base", base, cfg)
        fp = fingerprint(base)
        lcfg = LoRAConfig(8, 16.0, 0.0, ("c_attn", "c_proj"))
        dirs = []
        for i in range(n):
            m = GPT(cfg)
            m.load_state_dict(base.state_dict())
            inject_lora(m, lcfg)
            dirs.append(save_adapter(Path(d) / f"a{i}", m, lcfg, str(ckpt), fp))
        served = [base] + [adapter_model(base, p) for p in dirs]
        shared, copies = held_bytes(served), held_bytes([base]) * (n + 1)
    print(f"lora-modules, {preset} ({base.num_params() / 1e6:.1f}M params), {n} adapters: "
          f"{shared / 2**20:.1f} MiB held vs {copies / 2**20:.1f} MiB for {n + 1} copies "
          f"({shared / held_bytes([base]):.3f}x one model)")


def access_log_cost(requests: int, repeats: int) -> None:
    from fastapi.testclient import TestClient
    from types import SimpleNamespace

    from gpt3lab.serve.app import create_app
    from gpt3lab.serve.service import CompletionService

    engine = SimpleNamespace(tokenizer=None, context=8)
    apps = {"plain": create_app(CompletionService(engine, "m")),
            "logged": create_app(CompletionService(engine, "m"), access_log=io.StringIO())}
    times = {k: [] for k in apps}
    clients = {k: TestClient(a) for k, a in apps.items()}
    for _ in range(repeats):
        for k, c in clients.items():          # interleaved: both see the same load
            t0 = time.perf_counter()
            for _ in range(requests):
                c.get("/health")
            times[k].append((time.perf_counter() - t0) / requests * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"access log: GET /health {med['plain']:.0f} us plain, {med['logged']:.0f} us logged "
          f"(ratio {med['logged'] / med['plain']:.3f}; median of {repeats} x {requests})")


def download_resume() -> None:
    from hub_fake import FakeHub

    from gpt3lab.hub import snapshot

    size, cut = 40 << 20, 35 << 20
    with tempfile.TemporaryDirectory() as d:
        repo = Path(d) / "repo"
        repo.mkdir()
        (repo / "config.json").write_text('{"model_type": "gpt2"}')
        (repo / "model.safetensors").write_bytes(os.urandom(size))
        with FakeHub() as hub:
            hub.add_repo("org/big", repo)
            hub.cut["model.safetensors"] = cut
            os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(Path(d) / "home"))
            t0 = time.perf_counter()
            snapshot("org/big", progress=False)
            secs = time.perf_counter() - t0
            ranges = hub.gets("model.safetensors")
    resumed_from = int(ranges[1].split("=")[1].rstrip("-"))
    fetched = cut + size - resumed_from
    print(f"download resume: {size >> 20} MiB file cut at {cut >> 20} MiB, resumed from byte {resumed_from:,} "
          f"({ranges}); {fetched / size:.3f}x the file fetched in all; {secs:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-6l")
    ap.add_argument("--adapters", type=int, default=2)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"load average: {os.getloadavg()[0]:.1f}")
    lora_memory(a.preset, a.adapters)
    access_log_cost(a.requests, a.repeats)
    download_resume()
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
