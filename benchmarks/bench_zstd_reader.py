"""The .zst reader of `prepare` (issue 23) vs zstandard's stream reader, side by side.

    python benchmarks/bench_zstd_reader.py [--words 8000000] [--repeats 8]

zstandard's `stream_reader` ends a truncated frame silently (prepare then tokenized half a file), so
gpt3lab.data.sources decodes frames itself with `decompressobj` and refuses a frame without its end. This
times reading the same .zst (a level-3 frame of random words) through both, alternating (ABBA), and prints
the decompression rates and the median time ratio. Compare with prepare's tokenizing rate (~1.3 MB/s per
worker, docs/BENCHMARKS.md issue 13) to see the share of a prepare run it costs.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    import zstandard

    from gpt3lab.data import sources

    ap = argparse.ArgumentParser()
    ap.add_argument("--words", type=int, default=8_000_000)
    ap.add_argument("--repeats", type=int, default=8)
    args = ap.parse_args()
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    data = " ".join(rng.choice(vocab) for _ in range(args.words)).encode()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "corpus.txt.zst"
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))

        def ours() -> int:
            with sources.open_binary(path) as f:
                return sum(len(b) for b in iter(lambda: f.read(1 << 20), b""))

        def stream_reader() -> int:
            with io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)) as f:
                return sum(len(b) for b in iter(lambda: f.read(1 << 20), b""))

        readers = {"gpt3lab": ours, "stream_reader": stream_reader}
        times: dict[str, list[float]] = {k: [] for k in readers}
        for i in range(args.repeats):
            for name in (list(readers) if i % 2 == 0 else list(readers)[::-1]):
                t0 = time.perf_counter()
                assert readers[name]() == len(data)
                times[name].append(time.perf_counter() - t0)
    mb = len(data) / 1e6
    ratios = [a / b for a, b in zip(times["gpt3lab"], times["stream_reader"])]
    print(f"{mb:.0f} MB decompressed; " + ", ".join(f"{k} {mb / statistics.median(v):.0f} MB/s"
                                                     for k, v in times.items())
          + f"; time ratio gpt3lab/stream_reader median x{statistics.median(ratios):.2f}; "
            f"load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
