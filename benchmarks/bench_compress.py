"""Model-driven compression vs gzip / bz2 / xz on held-out Shakespeare (the demo model's val plays).

    python benchmarks/bench_compress.py [--ckpt runs/demo] [--bytes 16384] [--repeats 3]

Prints bits/byte (whole file incl. header, and payload only) against the model's own cross-entropy
(sum of -log2 p over the same tokens, same sliding context), compress/decompress bytes/s (median of
--repeats), and the classic compressors on the same bytes, measured side by side.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import statistics
import sys
import time
from pathlib import Path

import torch

from gpt3lab import load
from gpt3lab.checkpoint import read_config, resolve
from gpt3lab.compress import compress_bytes, decompress_bytes


def held_out_text(ckpt: Path, n_bytes: int, offset: int) -> bytes:
    """`n_bytes` of the val split's documents (whole plays never trained on), from `offset`, at a line start."""
    data_dir = Path(read_config(ckpt).get("data", "data/shakespeare-bpe4096"))
    docs = json.loads((data_dir / "val.json").read_text())["documents"]
    text = b"".join(Path(d).read_bytes() for d in docs)
    start = text.index(b"\n", offset) + 1
    return text[start:start + n_bytes]


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="runs/demo")
    ap.add_argument("--bytes", type=int, default=16384)
    ap.add_argument("--offset", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not Path(args.ckpt).exists():
        print(f"{args.ckpt} does not exist: run `make demo` first (figures pending)")
        return 1
    ckpt = resolve(args.ckpt)
    model, tok = load(ckpt)
    data = held_out_text(ckpt, args.bytes, args.offset)
    (blob, s), t_c = timed(lambda: compress_bytes(model, tok, data, threads=args.threads), args.repeats)
    back, t_d = timed(lambda: decompress_bytes(model, tok, blob), args.repeats)
    assert back == data, "round trip failed"
    n = len(data)
    print(f"checkpoint {ckpt} ({model.num_params() / 1e6:.2f}M params, context {model.config.context}), "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    print(f"text: {n:,} bytes of held-out Shakespeare, {s.n_tokens:,} tokens ({n / s.n_tokens:.2f} bytes/token)")
    print(f"{'method':<24}{'bytes':>9}{'bits/byte':>11}{'vs gpt3lab':>12}{'compress B/s':>15}{'decompress B/s':>16}")
    print(f"{'gpt3lab (file)':<24}{len(blob):>9,}{8 * len(blob) / n:>11.3f}{1:>12.2f}{n / t_c:>15,.0f}{n / t_d:>16,.0f}")
    print(f"{'  payload only':<24}{s.payload_bytes:>9,}{8 * s.payload_bytes / n:>11.3f}")
    print(f"{'  model -log2 p':<24}{s.ideal_bits / 8:>9,.0f}{s.ideal_bits_per_byte:>11.3f}")
    for name, comp, dec in (("gzip -9", lambda: gzip.compress(data, 9), gzip.decompress),
                            ("bz2 -9", lambda: bz2.compress(data, 9), bz2.decompress),
                            ("xz -9e", lambda: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
                             lzma.decompress)):
        c, tc = timed(comp, args.repeats)
        _, td = timed(lambda: dec(c), args.repeats)
        print(f"{name:<24}{len(c):>9,}{8 * len(c) / n:>11.3f}{len(c) / len(blob):>12.2f}"
              f"{n / tc:>15,.0f}{n / td:>16,.0f}")
    over = 8 * s.payload_bytes / s.ideal_bits - 1
    print(f"coding overhead: payload {over * 100:+.3f}% vs -log2 p; header {len(blob) - s.payload_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
