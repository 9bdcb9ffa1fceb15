"""Streaming `gpt3lab prepare`: throughput with 1 and 2 workers vs plain tiktoken, and peak memory vs corpus size.

Generates a corpus of copies of the bundled Shakespeare (each copy: every play with its lines shuffled by
the copy's seed, one ~5.5 MB file per copy) under --tmp, and deletes it afterwards.

1. Throughput on the first --slice-mb of the corpus (median of --repeats): `gpt3lab prepare --workers 1`
   and `--workers 2` (subprocesses, start-up included), against plain tiktoken `encode_ordinary_batch`
   (GPT-2 ranks, all texts in memory, tiktoken's default 8 threads) measured in the same run; ratio =
   prepare MB/s / tiktoken MB/s.
2. Peak memory of `gpt3lab prepare --workers 2` on corpora of each --sizes-gb: the sum of the RSS of the
   process and its workers, sampled every 0.1 s (shared pages are counted once per process, so this
   overstates), and the largest single process's ru_maxrss.

    python benchmarks/bench_prepare.py                      # 0.25 GB and 1 GB corpora
    python benchmarks/bench_prepare.py --sizes-gb 0.05 --slice-mb 8 --repeats 1   # smoke run
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gpt3lab.data.shakespeare import shakespeare_files
from gpt3lab.tokenizer import Tokenizer


def make_corpus(root: Path, gb: float) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    plays = [f.read_text(encoding="utf-8").splitlines(keepends=True) for f in shakespeare_files()]
    files, total, k = [], 0, 0
    while total < gb * 1e9:
        path = root / f"copy_{k:05d}.txt"
        if not path.exists():
            rng = random.Random(k)
            with open(path, "w", encoding="utf-8") as f:
                for lines in plays:
                    lines = lines[:]
                    rng.shuffle(lines)
                    f.write(f"copy {k}\n")
                    f.writelines(lines)
        total += path.stat().st_size
        files.append(path)
        k += 1
    return files


def tree_rss(pid: int) -> int:
    """Sum of VmRSS (bytes) of `pid` and its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            pass
    return total


def run_prepare(files: list[Path], out: Path, workers: int) -> tuple[float, int]:
    """(seconds, peak summed RSS) of one `gpt3lab prepare` subprocess."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "gpt3lab", "prepare", *map(str, files), "--out", str(out),
           "--workers", str(workers), "--no-progress", "--shard-tokens", str(100_000_000)]
    t0, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"prepare failed: {proc.stderr.read()}")
    return seconds, peak


def tiktoken_seconds(files: list[Path]) -> float:
    enc = Tokenizer.gpt2()._enc  # a tiktoken.Encoding with GPT-2's ranks (read offline)
    t0 = time.perf_counter()
    texts = [f.read_text(encoding="utf-8") for f in files]
    enc.encode_ordinary_batch(texts)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-gb", default="0.25,1.0")
    ap.add_argument("--slice-mb", type=float, default=24.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", default="/tmp/gpt3lab_bench_prepare")
    a = ap.parse_args()
    tmp = Path(a.tmp)
    sizes = [float(s) for s in a.sizes_gb.split(",")]
    try:
        files = make_corpus(tmp / "corpus", max(sizes))
        print(f"load avg {os.getloadavg()[0]:.2f}  ({os.cpu_count()} cores)", flush=True)
        sl, n = [], 0
        for f in files:
            if n >= a.slice_mb * 1e6:
                break
            sl.append(f)
            n += f.stat().st_size
        print(f"throughput on {n / 1e6:.0f} MB ({len(sl)} files), median of {a.repeats}:")
        rows = {"tiktoken encode_ordinary_batch": [tiktoken_seconds(sl) for _ in range(a.repeats)]}
        for w in (1, 2):
            rows[f"prepare --workers {w}"] = [run_prepare(sl, tmp / "out", w)[0] for _ in range(a.repeats)]
        base = n / 1e6 / statistics.median(rows["tiktoken encode_ordinary_batch"])
        for name, secs in rows.items():
            mbps = n / 1e6 / statistics.median(secs)
            print(f"  {name:32s} {mbps:6.2f} MB/s  ratio {mbps / base:.2f}", flush=True)
        print(f"load avg {os.getloadavg()[0]:.2f}", flush=True)
        for gb in sizes:
            part, total = [], 0
            for f in files:
                if total >= gb * 1e9:
                    break
                part.append(f)
                total += f.stat().st_size
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            secs, peak = run_prepare(part, tmp / "out", 2)
            maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            print(f"corpus {total / 1e9:.2f} GB, --workers 2: {secs:.0f} s ({total / 1e6 / secs:.1f} MB/s), "
                  f"peak RSS (sum of processes) {peak / 1e6:.0f} MB, largest process ru_maxrss "
                  f"{max(maxrss, before) / 1e3:.0f} MB; load avg {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
