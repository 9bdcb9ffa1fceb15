"""`gpt3lab export RUN_OR_CKPT OUT`: the single-file checkpoint (model.safetensors + config + tokenizer) of a
run's newest checkpoint or of one checkpoint, sharded (FSDP/TP runs) or not. OUT is what `gpt3lab.load`,
generate, serve, eval and `convert --to-hf` take; the training state (optimizer, data positions) stays behind.

    gpt3lab export runs/xl runs/xl-final
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gpt3lab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_OR_CKPT", help="run directory (its newest checkpoint) or checkpoint")
    p.add_argument("out", metavar="OUT", help="new directory for the single-file checkpoint")


def run(args: argparse.Namespace) -> int:
    from gpt3lab.train.sharded_checkpoint import export

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out} is a file; pick a new directory for the checkpoint (export never overwrites)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"OUT {out} exists and is not empty; pick a new directory (export never overwrites)")
    dest = export(args.source, out)
    print(f"{dest}: single-file checkpoint ({(dest / 'model.safetensors').stat().st_size / 2**20:.1f} MiB)")
    return 0
