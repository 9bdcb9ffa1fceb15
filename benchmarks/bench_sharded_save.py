"""Checkpoint save of an FSDP run (issue 13): gathered single file (rank 0 collects everything) vs sharded
(DCP: every rank writes its own shards) vs asynchronous sharded (time training is blocked), side by side.

    python benchmarks/bench_sharded_save.py [--nproc 2] [--layers 8] [--d-model 512] [--repeats 3] [--methods ...]

Launches NPROC gloo processes on this machine (CPU). Each builds the same GPT, shards it with FSDP,
takes one AdamW step (so the optimizer state exists), then saves it --repeats times per method. Prints per
method the median wall time of the save and the peak RSS growth over the process's RSS before saving
(ru_maxrss; each method runs in a fresh launch so peaks do not mix), for rank 0 and the other ranks.

Issue 23: `sharded` writes SHA256SUMS (every rank hashes its own shards) and its load verifies every file
before reading it and reads .metadata with the restricted unpickler; `nodigest` is the same save and load
with DCP's plain FileSystemWriter/Reader. The sharded methods also time loading the last checkpoint back
(--repeats times); the digest overhead is printed as ratios sharded / nodigest for save and load.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


def worker(args) -> None:
    import torch

    from gpt3lab import checkpoint as ck
    from gpt3lab.config import ModelConfig, TrainConfig
    from gpt3lab.model import GPT
    from gpt3lab.train import distributed, sharded_checkpoint
    from gpt3lab.train.loop import make_optimizer

    if args.method == "nodigest":              # DCP's own writer and reader: no digests, plain pickle.load
        import torch.distributed.checkpoint as dcp
        sharded_checkpoint.DigestWriter = dcp.FileSystemWriter
        sharded_checkpoint.VerifyingReader = dcp.FileSystemReader
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50304, context=256, n_layer=args.layers, d_model=args.d_model,
                      n_head=args.d_model // 64)
    dist = distributed.FSDP(torch.device("cpu"))
    model = dist.wrap_model(GPT(cfg))
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, cfg.vocab_size, (1, 64))
    model(x, x)[1].backward()
    opt.step()
    base = _rss_mb()
    saver = sharded_checkpoint.ShardedCheckpointer(async_save=args.method == "async")
    times, blocked = [], []
    for i in range(args.repeats):
        dest = ck.step_dir(args.out, i + 1)
        dist.barrier()
        t0 = time.perf_counter()
        if args.method == "gathered":          # the pre-DCP path: gather to full tensors, rank 0 writes
            weights, opt_state = dist.model_state(model), dist.optimizer_state(model, opt)
            if dist.is_main:
                ck.save_checkpoint(dest, model, cfg, None, fill_extra=lambda t: ck.save_train_state(
                    t, opt_state, {}), weights=weights)
            del weights, opt_state
        else:
            saver.save(dest, model, opt, lambda t: ck.write_config(t, cfg))
            blocked.append(time.perf_counter() - t0)
            saver.wait()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    loads = []
    for _ in range(args.repeats if args.method != "gathered" else 0):
        dist.barrier()
        t0 = time.perf_counter()
        sharded_checkpoint.load(ck.step_dir(args.out, args.repeats), model, opt)
        dist.barrier()
        loads.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rank": dist.rank, "median_s": statistics.median(times),
                      "load_s": statistics.median(loads) if loads else None,
                      "blocked_s": statistics.median(blocked) if blocked else None,
                      "params": sum(p.numel() for p in GPT(cfg).parameters()) if dist.is_main else 0,
                      "rss_growth_mb": peak - base}), flush=True)
    dist.close()


def launch(args, method: str, out: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(args.nproc):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(args.nproc),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", "--method", method, "--out",
                                       str(out), "--layers", str(args.layers), "--d-model", str(args.d_model),
                                       "--repeats", str(args.repeats)], env=env, stdout=subprocess.PIPE, text=True))
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="gathered,sharded,async,nodigest",
                    help="comma-separated: gathered, sharded, async, nodigest")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--method", default="gathered")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"load avg {os.getloadavg()[0]:.1f}; {args.nproc} gloo processes, {args.layers} layers, "
          f"d_model {args.d_model}")
    results = {}
    for method in args.methods.split(","):
        with tempfile.TemporaryDirectory() as d:
            res = launch(args, method, Path(d))
            size = sum(f.stat().st_size for f in Path(d).rglob("*.distcp"))
        r0, rest = res[0], res[1:]
        results[method] = r0
        blocked = f", training blocked {r0['blocked_s']:.2f} s" if method == "async" else ""
        load = f", load {r0['load_s']:.2f} s" if r0["load_s"] is not None else ""
        print(f"{method:<9} {r0['params'] / 1e6:.0f}M params: save {r0['median_s']:.2f} s{blocked}{load}; peak RSS "
              f"growth rank 0 {r0['rss_growth_mb']:.0f} MB, others {max(r['rss_growth_mb'] for r in rest):.0f} MB"
              + (f"; {size / 2**20 / args.repeats:.0f} MiB of shards per save" if size else ""))
    if {"sharded", "nodigest"} <= results.keys():
        a, b = results["sharded"], results["nodigest"]
        print(f"digest overhead (sharded / nodigest): save x{a['median_s'] / b['median_s']:.3f}, "
              f"load x{a['load_s'] / b['load_s']:.3f}; load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
