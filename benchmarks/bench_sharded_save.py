"""Checkpoint save of an FSDP run (issue 13): gathered single file (rank 0 collects everything) vs sharded
(DCP: every rank writes its own shards) vs asynchronous sharded (time training is blocked), side by side.

    python benchmarks/bench_sharded_save.py [--nproc 2] [--layers 8] [--d-model 512] [--repeats 3]

Launches NPROC gloo processes on this machine (CPU). Each builds the same GPT, shards it with FSDP,
takes one AdamW step (so the optimizer state exists), then saves it --repeats times per method. Prints per
method the median wall time of the save and the peak RSS growth over the process's RSS before saving
(ru_maxrss; each method runs in a fresh launch so peaks do not mix), for rank 0 and the other ranks.

    python benchmarks/bench_sharded_save.py --digests [--repeats 6]

Issue 23: what the SHA-256 digests cost. One launch alternates (ABBA order, so a noisy machine hits both
alike) a sharded save + load with gpt3lab's writer/reader (every rank hashes its shard files after writing
them; loading verifies every file before reading it and reads .metadata with the restricted unpickler)
and with DCP's plain FileSystemWriter/Reader. Prints the median times and the median of the per-pair
ratios (digests / plain) for save and for load.
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

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50304, context=256, n_layer=args.layers, d_model=args.d_model,
                      n_head=args.d_model // 64)
    dist = distributed.FSDP(torch.device("cpu"))
    model = dist.wrap_model(GPT(cfg))
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, cfg.vocab_size, (1, 64))
    model(x, x)[1].backward()
    opt.step()
    if args.method == "digests":
        return digest_ab(args, dist, model, opt, cfg)
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rank": dist.rank, "median_s": statistics.median(times),
                      "blocked_s": statistics.median(blocked) if blocked else None,
                      "params": sum(p.numel() for p in GPT(cfg).parameters()) if dist.is_main else 0,
                      "rss_growth_mb": peak - base}), flush=True)
    dist.close()


def digest_ab(args, dist, model, opt, cfg) -> None:
    """Save + load with digests (A) and with DCP's plain writer/reader (B), in ABBA order."""
    import shutil

    import torch.distributed.checkpoint as dcp

    from gpt3lab import checkpoint as ck
    from gpt3lab.train import sharded_checkpoint as sc

    variants = {"A": (sc.DigestWriter, sc.VerifyingReader), "B": (dcp.FileSystemWriter, dcp.FileSystemReader)}
    times = {v: {"save": [], "load": []} for v in variants}
    for i in range(args.repeats):
        for v in ("AB", "BA")[i % 2]:
            sc.DigestWriter, sc.VerifyingReader = variants[v]
            dest = ck.step_dir(args.out, i + 1)
            for what in ("save", "load"):
                dist.barrier()
                t0 = time.perf_counter()
                if what == "save":
                    sc.ShardedCheckpointer().save(dest, model, opt, lambda t: ck.write_config(t, cfg))
                else:
                    sc.load(dest, model, opt)
                dist.barrier()
                times[v][what].append(time.perf_counter() - t0)
            if dist.is_main:
                shutil.rmtree(dest)
    sc.DigestWriter, sc.VerifyingReader = variants["A"]
    print(json.dumps({"rank": dist.rank, "times": times}), flush=True)
    dist.close()


def report_digests(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        res = launch(args, "digests", Path(d))
    t = res[0]["times"]
    for what in ("save", "load"):
        a, b = t["A"][what], t["B"][what]
        ratios = [x / y for x, y in zip(a, b)]
        print(f"{what}: digests {statistics.median(a):.2f} s, plain {statistics.median(b):.2f} s; "
              f"ratio digests/plain median x{statistics.median(ratios):.3f} (pairs: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"load avg after: {os.getloadavg()[0]:.1f}")


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
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--digests", action="store_true", help="only the digest overhead (issue 23)")
    ap.add_argument("--method", default="gathered")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"load avg {os.getloadavg()[0]:.1f}; {args.nproc} gloo processes, {args.layers} layers, "
          f"d_model {args.d_model}")
    if args.digests:
        report_digests(args)
        return
    for method in ("gathered", "sharded", "async"):
        with tempfile.TemporaryDirectory() as d:
            res = launch(args, method, Path(d))
        r0, rest = res[0], res[1:]
        blocked = f", training blocked {r0['blocked_s']:.2f} s" if method == "async" else ""
        print(f"{method:<9} {r0['params'] / 1e6:.0f}M params: save {r0['median_s']:.2f} s{blocked}; peak RSS growth "
              f"rank 0 {r0['rss_growth_mb']:.0f} MB, others {max(r['rss_growth_mb'] for r in rest):.0f} MB")


if __name__ == "__main__":
    main()
