"""Training and decode speed under each malloc: glibc (default and tuned), mimalloc (as shipped and as
the launcher runs it), tcmalloc.

Each (variant, workload) runs in its own child process, started with that allocator (LD_PRELOAD, or
glibc tuned in-process the way gpt3lab.launcher does it); the variants alternate round by round so a
change of load hits them all alike. Workloads, on random tokens:

  train-fp32 / train-bf16  Trainer.train_step of --preset (default: demo, batch 16): median s/step after
                           --warmup steps, and the child's whole wall time (start-up included)
  decode                   gpt3lab.generate, greedy, batch 1, KV cache, --decode-preset model: ms/token

    python benchmarks/bench_allocator.py [--variants glibc,glibc-mallopt,mimalloc-default,mimalloc,tcmalloc]
        [--tcmalloc PATH]     # e.g. a libtcmalloc_minimal.so.4 extracted from the Debian package
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("glibc", "glibc-mallopt", "glibc-thp", "mimalloc-default", "mimalloc", "tcmalloc")
WORKLOADS = ("train-fp32", "train-bf16", "decode")


def variant_env(variant: str, tcmalloc: str | None) -> dict[str, str] | None:
    """Environment of a child under `variant` (None: that allocator is not available here)."""
    from gpt3lab import launcher

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    env[launcher.ENV] = "glibc"         # the child must not re-exec itself
    name = variant.split("-")[0]
    if name in ("mimalloc", "tcmalloc"):
        lib = tcmalloc if name == "tcmalloc" and tcmalloc else launcher._FINDERS[name]()
        if lib is None:
            return None
        env["LD_PRELOAD"] = lib
    for k in launcher.MIMALLOC_ENV:       # "mimalloc": as the launcher runs it; "mimalloc-default": as shipped
        env.pop(k, None)
    if variant == "mimalloc":
        env.update(launcher.MIMALLOC_ENV)
    if variant == "glibc-thp":
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    return env


def child(args) -> dict:
    """Run one workload in this process (already under its allocator) and return its figures."""
    from gpt3lab import launcher

    if args.child_variant == "glibc-mallopt":
        assert launcher.tune_glibc()
    import torch

    from gpt3lab.config import ModelConfig, TrainConfig
    from gpt3lab.model import GPT
    from gpt3lab.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"allocator": launcher.allocator_name()}
    if args.child_workload == "decode":
        from gpt3lab.generate import generate
        from gpt3lab.tokenizer import Tokenizer

        model = GPT(get_preset(args.decode_preset).model_config()).eval()
        tok, prompt = Tokenizer.gpt2(), list(range(100, 116))
        generate(model, tok, prompt, max_tokens=4, temperature=0)                  # warm-up
        ts, cpu, faults = [], time.process_time(), minor_faults()
        for _ in range(args.repeats):
            t = time.perf_counter()
            generate(model, tok, prompt, max_tokens=args.new_tokens, temperature=0)
            ts.append((time.perf_counter() - t) / args.new_tokens)
        out["ms_per_token"] = 1e3 * statistics.median(ts)
        out["cpu_ms_per_token"] = 1e3 * (time.process_time() - cpu) / (args.repeats * args.new_tokens)
        out["faults_per_token"] = (minor_faults() - faults) / (args.repeats * args.new_tokens)
        return out
    from gpt3lab.train.loop import Trainer

    p = get_preset(args.preset)
    mcfg = ModelConfig(**p.model)
    cfg = TrainConfig(**{**p.train, "batch_size": args.batch, "precision": args.child_workload[6:]})
    src = RandomTokens(mcfg.vocab_size, mcfg.context)
    tr = Trainer(GPT(mcfg), mcfg, cfg, src)
    ts = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            cpu, faults = time.process_time(), minor_faults()
        t = time.perf_counter()
        tr.train_step()
        if i >= args.warmup:
            ts.append(time.perf_counter() - t)
    out["s_per_step"] = statistics.median(ts)
    out["cpu_s_per_step"] = (time.process_time() - cpu) / args.steps
    out["faults_per_step"] = (minor_faults() - faults) / args.steps
    out["loss"] = tr.train_step()["loss"]
    return out


def minor_faults() -> int:
    """Minor page faults of this process so far (each a fresh page the kernel had to zero and map)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class RandomTokens:
    """A train source of random token windows (fixed seed)."""

    def __init__(self, vocab: int, context: int):
        import torch

        self.g, self.vocab, self.context = torch.Generator().manual_seed(0), vocab, context

    def next_batch(self, b: int):
        import torch

        x = torch.randint(0, self.vocab, (b, self.context + 1), generator=self.g)
        return x[:, :-1], x[:, 1:]


def run_child(variant: str, workload: str, env: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--child-variant", variant, "--child-workload", workload,
           "--preset", args.preset, "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--decode-preset", args.decode_preset, "--threads", str(args.threads),
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="glibc,glibc-mallopt,mimalloc-default,mimalloc,tcmalloc",
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tcmalloc", help="path of libtcmalloc_minimal.so.4 (default: the installed one)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--decode-preset", default="cpu-6l")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's choice)")
    ap.add_argument("--child-variant", help=argparse.SUPPRESS)
    ap.add_argument("--child-workload", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_workload:
        print(json.dumps(child(args)))
        return
    envs = {v: variant_env(v, args.tcmalloc) for v in args.variants.split(",")}
    for v in [v for v, e in envs.items() if e is None]:
        print(f"{v}: not available here, skipped")
    envs = {v: e for v, e in envs.items() if e is not None}
    results: dict = {}
    for r in range(args.rounds):
        for w in args.workloads.split(","):
            for v, env in envs.items():
                res = run_child(v, w, env, args)
                results.setdefault((w, v), []).append(res)
                print(f"round {r + 1} {w:10s} {v:14s} {json.dumps(res)}", flush=True)
    report(results)


def report(results: dict) -> None:
    """Medians over rounds; ratios glibc / variant (wall time, and process CPU time, which a loaded
    box inflates far less than wall time); page faults per step or token."""
    print("\nmedians over rounds (x: glibc / this variant)")
    for w in dict.fromkeys(w for w, _ in results):
        unit = "token" if w == "decode" else "step"
        scale = "ms" if w == "decode" else "s"
        keys = (f"{scale}_per_{unit}", f"cpu_{scale}_per_{unit}", f"faults_per_{unit}")
        med = {v: {k: statistics.median(r[k] for r in rs) for k in (*keys, "wall_s")}
               for (w2, v), rs in results.items() if w2 == w}
        base = med.get("glibc")
        for v, m in med.items():
            rel = (f"wall x{base[keys[0]] / m[keys[0]]:.2f}, cpu x{base[keys[1]] / m[keys[1]]:.2f}"
                   if base else "")
            loss = results[(w, v)][0].get("loss")
            print(f"  {w:10s} {v:14s} wall {m[keys[0]]:8.4f} {scale}/{unit}  cpu {m[keys[1]]:8.4f} "
                  f"{scale}/{unit}  {m[keys[2]]:8.0f} faults/{unit}  {rel}  child {m['wall_s']:5.1f} s"
                  + (f"  loss {loss!r}" if loss is not None else ""))


if __name__ == "__main__":
    main()
