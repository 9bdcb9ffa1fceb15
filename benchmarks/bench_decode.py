"""Decode speed at batch 1: gpt3lab.generate vs transformers `generate`, same weights, greedy, KV cache on.

    python benchmarks/bench_decode.py [--configs small,124m] [--new-tokens 128] [--threads 2] [--bf16]

Per-step decode time = (time for N new tokens - time for 1 new token) / (N - 1), so the prompt's
prefill is excluded; each figure is the median of --repeats runs, the peers alternating run by run in
the same process. The roofline is the time to read every weight once per token (wpe excluded: one
row is read) at the read bandwidth measured here by summing a 1 GiB tensor.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.generate import generate
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer

CONFIGS = {"small": dict(n_layer=6, d_model=384, n_head=6), "124m": dict(n_layer=12, d_model=768, n_head=12)}


def read_bandwidth(gib: float = 1.0, repeats: int = 7) -> float:
    """Bytes/s of a streaming read (a sum over a tensor far larger than the caches)."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        ts.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(ts)


def to_hf(model: GPT):
    """The same weights in a transformers GPT2LMHeadModel (Conv1D stores W transposed)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.context, n_embd=c.d_model,
                                    n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                    layer_norm_epsilon=c.layer_norm_eps)).eval()
    sd = {}
    for k, v in model.state_dict().items():
        conv = k.endswith(".weight") and any(f".{n}." in k for n in ("c_attn", "c_proj", "c_fc"))
        sd[k] = v.t().contiguous() if conv else v
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all(m.endswith(("attn.bias", "masked_bias")) for m in missing), (missing, unexpected)
    return hf


def once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_times(runs: dict, new_tokens: int, repeats: int) -> dict[str, float]:
    """Seconds per decoded token of each peer, prefill excluded; the peers alternate run by run."""
    for run in runs.values():
        run(2)                                             # warm-up (allocations, kernels, weight copies)
    ts = {name: ([], []) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            ts[name][0].append(once(lambda: run(new_tokens)))
            ts[name][1].append(once(lambda: run(1)))
    return {name: (statistics.median(a) - statistics.median(b)) / (new_tokens - 1) for name, (a, b) in ts.items()}


def bits_per_byte(model: GPT, tok: Tokenizer, text: str) -> float:
    ids = tok.encode(text)[: model.config.context + 1]
    with torch.inference_mode():
        _, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    return float(loss) * (len(ids) - 1) / math.log(2) / len(tok.decode_bytes(ids[1:]))


def bench_config(name: str, args, tok: Tokenizer, bw: float) -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50257, context=1024, **CONFIGS[name])).eval()
    hf = to_hf(model)
    prompt = torch.randint(0, 50000, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = lambda m: (lambda n: generate(m, tok, prompt, max_tokens=n, temperature=0))
    x = torch.tensor([prompt])

    def theirs(n):
        with torch.inference_mode():
            return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, use_cache=True, pad_token_id=tok.eot_id)

    a, b = ours(model)(args.new_tokens).tokens, theirs(args.new_tokens)[0, len(prompt):].tolist()
    same = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
    runs = {"hf": theirs, "fp32": ours(model)}
    if args.bf16:
        mb = copy.deepcopy(model).to(torch.bfloat16)
        runs["bf16"] = ours(mb)
    st = step_times(runs, args.new_tokens, args.repeats)
    t_hf, t_us = st["hf"], st["fp32"]
    nbytes = (model.num_params() - model.transformer.wpe.weight.numel()) * 4
    floor = nbytes / bw
    print(f"{name}: {model.num_params() / 1e6:.1f}M params, greedy tokens identical for {same}/{len(b)}")
    print(f"  transformers {t_hf * 1e3:7.2f} ms/token ({1 / t_hf:6.1f} tok/s)  {floor / t_hf:5.1%} of fp32 roofline")
    print(f"  gpt3lab fp32 {t_us * 1e3:7.2f} ms/token ({1 / t_us:6.1f} tok/s)  {floor / t_us:5.1%} of fp32 roofline"
          f"  speed-up {t_hf / t_us:.2f}x   (floor {floor * 1e3:.2f} ms)")
    if args.bf16:
        t_b = st["bf16"]
        with torch.inference_mode():
            ids = torch.tensor([prompt + a])
            l32, lb = model(ids)[0], mb(ids)[0].float()
        text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
        print(f"  gpt3lab bf16 {t_b * 1e3:7.2f} ms/token ({1 / t_b:6.1f} tok/s)  {floor / 2 / t_b:5.1%} of bf16 roofline"
              f"  speed-up {t_hf / t_b:.2f}x; max |logit diff| {float((l32 - lb).abs().max()):.3g} "
              f"(logit std {float(l32.std()):.3g}); bits/byte on README.md fp32 {bits_per_byte(model, tok, text):.4f}"
              f" bf16 {bits_per_byte(mb, tok, text):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="small,124m")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 weights and report the quality cost")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.gpt2()
    bw = read_bandwidth()
    print(f"threads {torch.get_num_threads()}, measured read bandwidth {bw / 1e9:.1f} GB/s")
    for name in args.configs.split(","):
        bench_config(name, args, tok, bw)


if __name__ == "__main__":
    main()
