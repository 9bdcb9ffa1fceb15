"""Decode speed at batch 1: gpt3lab.generate vs transformers, CTranslate2 and llama.cpp, same weights, greedy.

    python benchmarks/bench_decode.py [--configs small,124m] [--new-tokens 128] [--threads 2] [--bf16]
        [--quantize none,int8] [--peers hf,ct2,llama] [--llama-cpp-src DIR] [--compile [MODE]]
    python benchmarks/bench_decode.py --device cuda --compile --peers hf --quantize none,bf16   # on a GPU

gpt3lab runs with each --quantize mode (gpt3lab.model.quant); --compile adds each mode again with the
compiled decode step (gpt3lab.generate.core; warmed up first, cold and warm compile times printed).
Exactness: every peer's (and gpt3lab mode's) greedy agreement with gpt3lab fp32, and the max |logit - fp32
logit| over the prompt + fp32's greedy tokens, where the peer exposes logits (llama.cpp, CTranslate2). Peers (optional extra `peers`: pip install
-e .[peers]; each is skipped with a message when it is not installed), all on the very same random GPT-2
weights exported with gpt3lab.convert.to_hf (what `gpt3lab convert --to-hf` writes):
  hf     transformers GPT2LMHeadModel, fp32
  ct2    CTranslate2, converted by its TransformersConverter, compute types float32 and int8
  llama  llama.cpp through llama-cpp-python, GGUF files f32 / f16 / q8_0 written by llama.cpp's own
         convert_hf_to_gguf.py. It ships in llama-cpp-python's sdist (vendor/llama.cpp): pass that
         directory as --llama-cpp-src (or $LLAMA_CPP_SRC), e.g. after
         `pip download --no-binary :all: --no-deps llama-cpp-python` and unpacking it.

Per-step decode time = (time for N new tokens - time for 1 new token) / (N - 1), so the prompt's
prefill is excluded; each figure is the median of --repeats runs, the peers alternating run by run in
the same process. The roofline is the time to read every weight once per token (wpe excluded: one
row is read) at the read bandwidth measured here by summing a 1 GiB tensor.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpt3lab.config import ModelConfig
from gpt3lab.generate import generate
from gpt3lab.model import GPT
from gpt3lab.model.quant import prepare_for_inference
from gpt3lab.tokenizer import Tokenizer

CONFIGS = {"tiny": dict(n_layer=2, d_model=128, n_head=2), "small": dict(n_layer=6, d_model=384, n_head=6),
           "124m": dict(n_layer=12, d_model=768, n_head=12)}


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


CLOCK = time.perf_counter      # --clock cpu: time.process_time (CPU time of this process: on a loaded box,
                                # time spent preempted is not counted; every peer runs in this process)


def once(fn) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


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


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- peers: each returns {label: run(n) -> the n greedy token ids after the prompt} or a skip message ----

def hf_peer(model: GPT, prompt: list[int], eot: int, device: str = "cpu", **_) -> dict:
    hf = to_hf(model).to(device)
    x = torch.tensor([prompt], device=device)

    def run(n):
        with torch.inference_mode():
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, use_cache=True, pad_token_id=eot)
        return out[0, len(prompt):].tolist()
    return {"transformers fp32": run}


def ct2_peer(hf_dir: Path, work: Path, prompt: list[int], threads: int, **_) -> dict | str:
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        return "CTranslate2 skipped: `pip install ctranslate2` (or the `peers` extra)"
    out = TransformersConverter(str(hf_dir)).convert(str(work / "ct2"), force=True)
    vocab = {i: t for t, i in json.loads((hf_dir / "vocab.json").read_text()).items()}
    start = [vocab[i] for i in prompt]
    runs = {}
    for ct in ("float32", "int8"):
        gen = ctranslate2.Generator(out, device="cpu", compute_type=ct, intra_threads=threads)

        def run(n, gen=gen):
            r = gen.generate_batch([start], max_length=n, min_length=n, sampling_topk=1,
                                   include_prompt_in_result=False)
            return r[0].sequences_ids[0]

        def logits(ids, gen=gen):
            lp = gen.forward_batch([[vocab[i] for i in ids]])
            return torch.as_tensor(np.asarray(lp))[0].float()          # (T, V)
        run.logits = logits
        runs[f"CTranslate2 {ct.replace('float32', 'fp32')}"] = run
    return runs


def llama_peer(hf_dir: Path, work: Path, prompt: list[int], threads: int, src: str | None, **_) -> dict | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "llama.cpp skipped: `pip install llama-cpp-python` (or the `peers` extra)"
    script = Path(src or "") / "convert_hf_to_gguf.py"
    if not src or not script.is_file():
        return (f"llama.cpp skipped: no convert_hf_to_gguf.py in --llama-cpp-src {src!r}; pass the vendor/llama.cpp "
                f"directory of the unpacked llama-cpp-python sdist")
    runs = {}
    for outtype in ("f32", "f16", "q8_0"):
        gguf = work / f"model-{outtype}.gguf"
        subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(gguf), "--outtype", outtype],
                       check=True, capture_output=True)
        llm = Llama(model_path=str(gguf), n_ctx=512, n_batch=64, n_threads=threads, n_threads_batch=threads,
                    verbose=False, logits_all=True)

        def run(n, llm=llm):
            out = []
            for t in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
                out.append(t)
                if len(out) == n:
                    return out

        def logits(ids, llm=llm):
            llm.reset()
            llm.eval(ids)
            return torch.as_tensor(np.asarray(llm.scores[:len(ids)])).float()   # (T, V)
        run.logits = logits
        runs[f"llama.cpp {outtype}"] = run
    return runs


PEERS = {"hf": hf_peer, "ct2": ct2_peer, "llama": llama_peer}


def quality(model: GPT, q: GPT, tok: Tokenizer, ids: list[int]) -> str:
    """max |logit diff| over a full forward of `ids`, and bits/byte of README.md, quantized vs fp32."""
    with torch.inference_mode():
        l32, lq = model(torch.tensor([ids]))[0], q(torch.tensor([ids]))[0].float()
    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    return (f"max |logit diff| {float((l32 - lq).abs().max()):.3g} (logit std {float(l32.std()):.3g}); "
            f"bits/byte on README.md fp32 {bits_per_byte(model, tok, text):.4f} vs {bits_per_byte(q, tok, text):.4f}")


def bench_config(name: str, args, tok: Tokenizer, bw: float) -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50257, context=1024, **CONFIGS[name])).eval()
    prompt = torch.randint(0, 50000, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = lambda m, c=False: (lambda n: generate(m, tok, prompt, max_tokens=n, temperature=0, compile=c).tokens)
    models = {mode: prepare_for_inference(copy.deepcopy(model).to(args.device), mode)
              for mode in args.quantize.split(",")}
    runs = {f"gpt3lab {mode.replace('none', 'fp32')}": ours(m) for mode, m in models.items()}
    if args.compile:
        for mode, m in models.items():
            label = f"gpt3lab {mode.replace('none', 'fp32')} compiled"
            runs[label] = ours(m, args.compile)
            t = once(lambda: runs[label](2))                  # compiles the decode step (cold, or from the disk cache)
            print(f"  {label}: first decode (compile) {t:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        from gpt3lab.convert import to_hf as export_hf

        hf_dir = export_hf(model, Path(tmp) / "hf", tokenizer=tok)          # what `convert --to-hf` writes
        for peer in args.peers.split(","):
            got = PEERS[peer](model=model, prompt=prompt, eot=tok.eot_id, hf_dir=hf_dir, work=Path(tmp),
                              threads=torch.get_num_threads(), src=args.llama_cpp_src, device=args.device)
            if isinstance(got, str):
                print(f"  {got}")
            else:
                runs.update(got)
        ref = runs[next(iter(runs))](args.new_tokens)
        agree = {}
        for label, run in runs.items():
            toks = list(run(args.new_tokens))
            agree[label] = next((i for i, (p, q) in enumerate(zip(ref, toks)) if p != q), min(len(ref), len(toks)))
        st = step_times(runs, args.new_tokens, args.repeats)
        ids = prompt + ref
        with torch.inference_mode():
            l32 = model(torch.tensor([ids]))[0][0]                                          # (T, V) fp32
        diffs = {label: float((run.logits(ids)[:, :l32.shape[1]] - l32).abs().max())
                 for label, run in runs.items() if hasattr(run, "logits")}
    floor = (model.num_params() - model.transformer.wpe.weight.numel()) * 4 / bw
    print(f"{name}: {model.num_params() / 1e6:.1f}M params, threads {torch.get_num_threads()}, load avg {load_avg()}; "
          f"fp32 weight-read floor {floor * 1e3:.2f} ms/token")
    base, first = st.get("llama.cpp q8_0"), next(iter(runs))
    for label, t in st.items():
        vs = f"  {base / t:5.2f}x llama.cpp q8_0 speed" if base else ""
        print(f"  {label:20s} {t * 1e3:7.2f} ms/token ({1 / t:6.1f} tok/s)  greedy = {first}'s for "
              f"{agree[label]}/{args.new_tokens}{vs}")
    for mode, m in models.items():
        if mode != "none":
            print(f"  gpt3lab {mode}: {quality(model, m.cpu(), tok, ids)}")
    for label, d in diffs.items():
        print(f"  {label}: max |logit - gpt3lab fp32 logit| {d:.3g} over the prompt + fp32's greedy tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="small,124m")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="threads of every engine (default: torch's choice)")
    ap.add_argument("--quantize", default="none,int8", help="gpt3lab modes to time (none, bf16, int8)")
    ap.add_argument("--peers", default="hf,ct2,llama", help="peers to time: hf, ct2, llama")
    ap.add_argument("--llama-cpp-src", default=os.environ.get("LLAMA_CPP_SRC"),
                    help="llama.cpp source dir holding convert_hf_to_gguf.py (default $LLAMA_CPP_SRC)")
    ap.add_argument("--compile", nargs="?", const=True, default=False,
                    help="also time gpt3lab with the compiled decode step (optionally a torch.compile mode)")
    ap.add_argument("--device", default="cpu", help="gpt3lab's and transformers' device (cuda: peers hf only)")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="wall time, or the process's CPU time (a loaded box; needs --threads 1 to compare)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.gpt2()
    bw = read_bandwidth()
    print(f"threads {torch.get_num_threads()}, measured read bandwidth {bw / 1e9:.1f} GB/s, load avg {load_avg()}")
    for name in args.configs.split(","):
        bench_config(name, args, tok, bw)


if __name__ == "__main__":
    main()
