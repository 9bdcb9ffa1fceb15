"""Quality cost of --quantize: held-out bits/byte, max |logit difference| and greedy agreement vs fp32.

    python benchmarks/bench_quant_quality.py [CHECKPOINT] --data DATA_DIR [--tokens 20000] [--modes int8,bf16]

CHECKPOINT: a trained checkpoint or run dir (e.g. runs/demo); without it, a GPT-2-shaped model
(12 layers, d_model 768, GPT-2 vocabulary, random weights as in bench_decode.py). The held-out text is
the first --tokens tokens of the `val` split of DATA_DIR (prepared by `gpt3lab prepare` / the demo),
decoded to text and re-encoded with the model's tokenizer. Bits/byte as `gpt3lab eval --perplexity`
computes it (rolling windows); max |logit diff| over one full context window; greedy agreement = the
number of the first --greedy tokens generated from a 16-token held-out prompt that equal fp32's.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

from gpt3lab.data.shards import open_shards, read_header
from gpt3lab.eval.scoring import perplexity
from gpt3lab.generate import generate
from gpt3lab.model.quant import prepare_for_inference


def heldout_text(data_dir: str, n_tokens: int) -> str:
    from gpt3lab.data import load_data_tokenizer

    ids = open_shards(data_dir, read_header(data_dir, "val"))[0][:n_tokens].tolist()
    return load_data_tokenizer(data_dir).decode(ids)


def load_model(checkpoint: str | None):
    if checkpoint:
        import gpt3lab
        return gpt3lab.load(checkpoint)
    from gpt3lab.config import ModelConfig
    from gpt3lab.model import GPT
    from gpt3lab.tokenizer import Tokenizer

    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=50257, context=1024, n_layer=12, d_model=768, n_head=12)).eval(), Tokenizer.gpt2()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--data", required=True, help="prepared data dir with a val split")
    ap.add_argument("--tokens", type=int, default=20000, help="held-out tokens of the val split to score")
    ap.add_argument("--greedy", type=int, default=128)
    ap.add_argument("--modes", default="int8,bf16")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.checkpoint)
    text = heldout_text(args.data, args.tokens)
    ids = tok.encode(text)
    n_bytes = len(text.encode())
    window = torch.tensor([ids[:model.config.context]])
    prompt = ids[:16]
    n_greedy = min(args.greedy, model.config.context - len(prompt))     # the demo model's context is 128
    print(f"model {args.checkpoint or 'GPT-2 shape, random weights'} ({model.num_params() / 1e6:.1f}M params), "
          f"{len(ids):,} held-out tokens / {n_bytes:,} bytes, threads {torch.get_num_threads()}, "
          f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ref_bpb = perplexity(model, ids, n_bytes, tok.eot_id).bits_per_byte
    with torch.inference_mode():
        ref_logits = model(window)[0].float()
    ref_greedy = generate(model, tok, prompt, max_tokens=n_greedy, temperature=0.0).tokens
    print(f"  fp32: bits/byte {ref_bpb:.4f}")
    for mode in args.modes.split(","):
        q = prepare_for_inference(copy.deepcopy(model), mode)
        bpb = perplexity(q, ids, n_bytes, tok.eot_id).bits_per_byte
        with torch.inference_mode():
            diff = float((q(window)[0].float() - ref_logits).abs().max())
        g = generate(q, tok, prompt, max_tokens=n_greedy, temperature=0.0).tokens
        agree = next((i for i, (a, b) in enumerate(zip(ref_greedy, g)) if a != b), min(len(g), len(ref_greedy)))
        print(f"  {mode}: bits/byte {bpb:.4f} ({(bpb / ref_bpb - 1) * 100:+.2f}% vs fp32), max |logit diff| "
              f"{diff:.4f} (fp32 logit std {float(ref_logits.std()):.3f}), greedy agreement {agree}/{len(ref_greedy)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
