"""`gpt3lab presets`: every preset with its shape, parameter count and training defaults.

    gpt3lab presets          a table
    gpt3lab presets --json   the same as JSON (the model and train settings each preset applies)
"""
from __future__ import annotations

import argparse
import json

from gpt3lab.presets import PRESETS


def rows() -> list[dict]:
    """One dict per preset: name, params, model settings, train settings, note."""
    from dataclasses import asdict

    from gpt3lab.sizing import n_params

    out = []
    for name, p in PRESETS.items():
        cfg = p.model_config()
        out.append({"name": name, "params": n_params(cfg), "model": asdict(cfg), "train": dict(p.train),
                    "note": p.note})
    return out


def _human(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def table(rs: list[dict]) -> str:
    head = ("preset", "params", "layers", "d_model", "heads x d_head", "context", "vocab", "attention", "lr")
    lines = [head]
    for r in rs:
        m = r["model"]
        attn = m["attention_pattern"] + (f" (band {m['local_window']})" if m["attention_pattern"] != "dense" else "")
        lr = r["train"].get("lr")
        lines.append((r["name"], _human(r["params"]), str(m["n_layer"]), str(m["d_model"]),
                      f"{m['n_head']} x {m['d_head']}", str(m["context"]), str(m["vocab_size"]), attn,
                      "" if lr is None else f"{lr:.1e}"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    rs = rows()
    print(json.dumps(rs, indent=2) if args.json else table(rs) + "\n\nuse with: gpt3lab train --preset NAME; "
          "gpt3lab size NAME for FLOPs, memory and cost")
    return 0
