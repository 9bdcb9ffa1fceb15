"""Tokenizer and `prepare` throughput on the Shakespeare corpus (medians of repeated runs).

    python benchmarks/bench_tokenizer.py [--repeats 5] [--vocab 4096]

Prints: gpt3lab GPT-2 encode MB/s vs plain tiktoken (same files, same run, ratio), encode_batch with
threads, a trained BPE's encode MB/s, BPE training time (HF trainer + conversion to ranks), and
`prepare` end to end MB/s.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from gpt3lab.data.prepare import prepare
from gpt3lab.data.shakespeare import shakespeare_files
from gpt3lab.tokenizer import EOT, Tokenizer, gpt2_files, hf_to_ranks, train_hf


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=4096)
    a = ap.parse_args()
    docs = [f.read_text(encoding="utf-8") for f in shakespeare_files()]
    text = EOT.join(docs)
    mb = len(text.encode("utf-8")) / 1e6
    print(f"corpus: {len(docs)} works, {mb:.2f} MB")

    ours = Tokenizer.gpt2()
    enc_json, vocab_bpe = gpt2_files()
    ref = tiktoken.Encoding("gpt2-ref", pat_str=r50k_pat_str, special_tokens={EOT: 50256},
                            mergeable_ranks=data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(enc_json)))
    assert ours.encode(text) == ref.encode(text, allowed_special="all")
    rows = []
    for _ in range(a.repeats):  # interleave peers so load on the shared box hits both alike
        rows.append((median_time(lambda: ours.encode(text), 1),
                     median_time(lambda: ref.encode(text, allowed_special="all"), 1)))
    t_ours, t_ref = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"gpt2 encode, 1 thread:     gpt3lab {mb / t_ours:6.2f} MB/s   tiktoken {mb / t_ref:6.2f} MB/s"
          f"   ratio {t_ref / t_ours:.3f}")
    tb_ours = median_time(lambda: ours.encode_batch(docs, num_threads=2), a.repeats)
    tb_ref = median_time(lambda: ref.encode_batch(docs, num_threads=2, allowed_special="all"), a.repeats)
    print(f"gpt2 encode_batch, 2 thr:  gpt3lab {mb / tb_ours:6.2f} MB/s   tiktoken {mb / tb_ref:6.2f} MB/s"
          f"   ratio {tb_ref / tb_ours:.3f}")

    t_hf = median_time(lambda: train_hf(docs, a.vocab), max(1, a.repeats // 2))
    hf = train_hf(docs, a.vocab)
    t_conv = median_time(lambda: hf_to_ranks(hf), a.repeats)
    trained = Tokenizer.train(docs, a.vocab)
    print(f"BPE training to {a.vocab}: HF tokenizers trainer {t_hf:.2f} s + conversion to ranks "
          f"{t_conv * 1000:.0f} ms")
    t_tr = median_time(lambda: trained.encode(text), a.repeats)
    t_hfenc = median_time(lambda: hf.encode(text), max(1, a.repeats // 2))
    print(f"{trained.name} encode:  gpt3lab {mb / t_tr:6.2f} MB/s   (HF tokenizers encode of the same "
          f"model {mb / t_hfenc:6.2f} MB/s, ratio {t_hfenc / t_tr:.2f})")

    with tempfile.TemporaryDirectory() as tmp:
        t_prep = median_time(lambda: prepare(["shakespeare"], tmp, "gpt2", progress=False), a.repeats)
    print(f"prepare shakespeare (gpt2), end to end: {mb / t_prep:6.2f} MB/s ({t_prep:.2f} s)")


if __name__ == "__main__":
    main()
