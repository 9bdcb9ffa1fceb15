"""`gpt3lab plot RUN_DIR [RUN_DIR ...]`: loss curves (train, raw and smoothed, + val) above the learning rate, per step.

One run: RUN/loss.png. Several runs: one colour per run on shared axes (--out, default ./runs.png), the
legend naming each run directory, so runs with different settings compare at a glance.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gpt3lab.errors import UserError
from gpt3lab.train.logger import LOSS_PARTS


def _records(run: Path) -> list[dict]:
    from gpt3lab.train.loop import read_log

    if not (run / "log.jsonl").is_file():
        raise UserError(f"{run}/log.jsonl not found; point at a run directory written by `gpt3lab train`")
    recs = read_log(run)
    if not recs:
        raise UserError(f"{run}/log.jsonl holds no records yet")
    return recs


def plot_runs(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Draw loss (train smoothed by a local linear fit, raw faint, val markers) and lr against step for each run into `out`."""
    import matplotlib
    matplotlib.use("Agg")                 # files only, no display needed
    import matplotlib.pyplot as plt

    runs = [Path(r) for r in run_dirs]
    data = [(run, _records(run)) for run in runs]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), dpi=120, sharex=True, height_ratios=(3, 1))
    single = len(runs) == 1
    for i, (run, recs) in enumerate(data):
        color = f"C{i}"
        steps, loss = [r["step"] for r in recs], [r["loss"] for r in recs]
        val = [(r["step"], r["val_loss"]) for r in recs if r.get("val_loss") is not None]
        ax.plot(steps, loss, lw=0.6, alpha=0.3, color=color)
        ax.plot(steps, smooth(loss), lw=1.5, color=color, label="train (smoothed)" if single else f"{run.name} train")
        for k, style in zip(LOSS_PARTS, (":", "-.")):     # a composite loss (distillation): its parts
            if single and all(k in r for r in recs):
                ax.plot(steps, smooth([r[k] for r in recs]), style, lw=1.2, label=f"train {k} (smoothed)")
        if val:
            ax.plot(*zip(*val), "o--", ms=3, lw=1, color=color if not single else "tab:orange",
                    label="val" if single else f"{run.name} val")
        ax_lr.plot(steps, [r["lr"] for r in recs], lw=1.2, color=color, label=None if single else run.name)
    last = data[0][1][-1]
    if single and last.get("val_bpb") is not None:
        ax.set_title(f"{runs[0].name}: val {last['val_loss']:.3f} nats/token, "
                     f"{last['val_bpb']:.3f} bits/byte at step {last['step']}", fontsize=9)
    ax.set_ylabel("loss (nats/token)")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for a in (ax, ax_lr):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    dest = Path(out) if out else (runs[0] / "loss.png" if single else Path("runs.png"))
    fig.savefig(dest)
    plt.close(fig)
    return dest


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """One run's plot (default RUN/loss.png)."""
    return plot_runs([run_dir], out)


def smooth(ys: list[float], half_width: int | None = None) -> list[float]:
    """Local linear fit of `ys` against the step index over a window of +-half_width points (clipped at the
    ends), evaluated at each point. Unlike an EMA it has no lag on a falling curve: at the end of a short
    run the line ends where the raw loss is heading, not several steps behind it. The default half-width
    grows with the run (1/40 of it), so long runs are smoothed more."""
    import numpy as np

    n = len(ys)
    if n < 3:
        return list(map(float, ys))
    h = half_width if half_width is not None else max(1, n // 40)
    x, y = np.arange(n, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    # window sums from prefix sums: O(n) for any window
    c = [np.concatenate(([0.0], np.cumsum(v))) for v in (np.ones(n), x, y, x * x, x * y)]
    lo, hi = np.clip(x - h, 0, n).astype(int), np.clip(x + h + 1, 0, n).astype(int)
    k, sx, sy, sxx, sxy = (v[hi] - v[lo] for v in c)
    var = k * sxx - sx * sx
    slope = np.divide(k * sxy - sx * sy, var, out=np.zeros(n), where=var > 0)
    return [float(v) for v in (sy - slope * sx) / k + slope * x]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding log.jsonl (several: compare)")
    p.add_argument("--out", help="PNG path (default RUN_DIR/loss.png for one run, ./runs.png for several)")


def run(args: argparse.Namespace) -> int:
    print(plot_runs(args.run_dirs, args.out))
    return 0
