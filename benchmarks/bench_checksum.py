"""Cost of the weights checksum (issue 11): SHA-256 verification vs the plain checkpoint load, side by side.

    python benchmarks/bench_checksum.py [--preset gpt3-small] [--repeats 5]

Saves a randomly initialised model of the preset once, then times (median of --repeats, page cache warm)
`load_model` with the checksum record present (verify + load) and absent (plain load), and the hash alone.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gpt3lab import checkpoint as ck
from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.presets import get_preset


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt3-small")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        model = GPT(ModelConfig(**get_preset(args.preset).model))
        ckpt = ck.save_checkpoint(Path(d) / "ckpt", model, model.config)
        weights, record = ckpt / "model.safetensors", ckpt / "model.safetensors.sha256"
        size = weights.stat().st_size / 2**20
        del model
        hashed = median_time(lambda: ck.verify_checksum(weights), args.repeats)
        verified = median_time(lambda: ck.load_model(ckpt), args.repeats)
        kept = record.read_text()
        record.unlink()
        plain = median_time(lambda: ck.load_model(ckpt), args.repeats)
        record.write_text(kept)
    print(f"{args.preset}: {size:.0f} MiB, torch threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"  plain load_model     {plain:.3f} s")
    print(f"  load_model + verify  {verified:.3f} s  (ratio {verified / plain:.2f}x)")
    print(f"  SHA-256 alone        {hashed:.3f} s  ({size / hashed:.0f} MiB/s, {hashed / plain:.2f}x the plain load)")


if __name__ == "__main__":
    main()
