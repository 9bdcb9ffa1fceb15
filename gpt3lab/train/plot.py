"""`gpt3lab plot RUN_DIR`: RUN/loss.png with the train loss (per step, smoothed) and the val loss."""
from __future__ import annotations

import argparse
from pathlib import Path

from gpt3lab.errors import UserError


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw train and val loss against step from RUN/log.jsonl into `out` (default RUN/loss.png)."""
    import matplotlib
    matplotlib.use("Agg")                 # files only, no display needed
    import matplotlib.pyplot as plt

    from gpt3lab.train.loop import read_log

    run = Path(run_dir)
    if not (run / "log.jsonl").is_file():
        raise UserError(f"{run}/log.jsonl not found; point at a run directory written by `gpt3lab train`")
    recs = read_log(run)
    if not recs:
        raise UserError(f"{run}/log.jsonl holds no records yet")
    steps, loss = [r["step"] for r in recs], [r["loss"] for r in recs]
    val = [(r["step"], r["val_loss"]) for r in recs if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, loss, lw=0.6, alpha=0.35, color="tab:blue")
    ax.plot(steps, _ema(loss), lw=1.5, color="tab:blue", label="train (EMA)")
    if val:
        ax.plot(*zip(*val), "o-", ms=3, color="tab:orange", label="val")
        if recs[-1].get("val_bpb") is not None:
            ax.set_title(f"{run.name}: val {recs[-1]['val_loss']:.3f} nats/token, "
                         f"{recs[-1]['val_bpb']:.3f} bits/byte at step {recs[-1]['step']}", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    dest = Path(out) if out else run / "loss.png"
    fig.savefig(dest)
    plt.close(fig)
    return dest


def _ema(xs: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (no lag toward the first value)."""
    out, m = [], 0.0
    for t, x in enumerate(xs, 1):
        m = beta * m + (1 - beta) * x
        out.append(m / (1 - beta ** t))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding log.jsonl")
    p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png)")


def run(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.out))
    return 0
