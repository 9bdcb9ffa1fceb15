"""The ladder's figure: IsoFLOP curves with their minima (Chinchilla Figure 3, left), the optimal size and
tokens against compute (Figure 3, middle/right), and loss against compute with the fitted frontier
(GPT-3 Figure 3.1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_ladder(path: Path, runs: list[dict], fit: dict | None, predict: list[float] = ()) -> Path:
    """Write the three panels to `path` (PNG). runs: dicts with budget, params, val_loss, flops."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_iso, ax_opt, ax_loss) = plt.subplots(1, 3, figsize=(15, 4.6), dpi=110)
    budgets = sorted({r["budget"] for r in runs})
    colors = {c: plt.cm.viridis(i / max(1, len(budgets) - 1)) for i, c in enumerate(budgets)}
    optima = {o["budget"]: o for o in (fit or {}).get("optima", [])}
    for c in budgets:
        rs = sorted((r for r in runs if r["budget"] == c), key=lambda r: r["params"])
        n, y = [r["params"] for r in rs], [r["val_loss"] for r in rs]
        ax_iso.plot(n, y, "o", color=colors[c], label=f"C={c:.2g}")
        if c in optima:
            o = optima[c]
            xs = np.linspace(np.log(n[0]), np.log(n[-1]), 100)
            ax_iso.plot(np.exp(xs), np.polyval(o["parabola"], xs), "-", color=colors[c], lw=1)
            ax_iso.plot([o["n_opt"]], [o["l_opt"]], "*", color=colors[c], ms=14, mec="k")
        ax_loss.scatter([r["flops"] for r in rs], y, s=12, color="0.6", zorder=2)
    ax_iso.set(xscale="log", xlabel="parameters N", ylabel="held-out loss (nats/token)", title="IsoFLOP profiles")
    _legend(ax_iso)
    laws = {k: v["value"] for k, v in (fit or {}).get("laws", {}).items()}
    if optima:
        cs = np.array(sorted(optima))
        hi = max([cs[-1], *predict])
        grid = np.geomspace(cs[0] / 2, hi * 2, 100)
        ax_opt.plot(cs, [optima[c]["n_opt"] for c in cs], "o", color="C0", label="N_opt (parabola minima)")
        ax_opt.plot(cs, [optima[c]["d_opt"] for c in cs], "s", color="C1", label="D_opt = C / FLOPs per token")
        if "a" in laws:
            ax_opt.plot(grid, laws["k_N"] * grid ** laws["a"], "-", color="C0", label=f"N ∝ C^{laws['a']:.2f}")
            ax_opt.plot(grid, laws["k_D"] * grid ** laws["b"], "-", color="C1", label=f"D ∝ C^{laws['b']:.2f}")
        ax_loss.plot(cs, [optima[c]["l_opt"] for c in cs], "*", color="C3", ms=12, mec="k", zorder=3,
                     label="IsoFLOP minima")
        if "E" in laws:
            ax_loss.plot(grid, laws["E"] + laws["A"] * grid ** -laws["alpha"], "-", color="C3",
                         label=f"L = {laws['E']:.2f} + {laws['A']:.3g}·C^-{laws['alpha']:.3f}")
            for p in (fit or {}).get("predictions", []):
                ax_loss.plot([p["budget"]], [p["loss"]["value"]], "D", color="C2", ms=8, mec="k",
                             label=f"prediction at C={p['budget']:.2g}")
    ax_opt.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", title="compute-optimal N and D")
    _legend(ax_opt)
    ax_loss.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="held-out loss",
                title="loss vs compute (grey: every run)")
    _legend(ax_loss)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
