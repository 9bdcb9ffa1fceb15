"""Fits of an IsoFLOP ladder (Hoffmann et al. 2022, "Approach 2"), numpy only.

1. Per budget C: a parabola of held-out loss in ln N through the budget's runs; its vertex gives N_opt(C)
   and L_opt(C); D_opt(C) = C / flops_per_token(N_opt), with flops_per_token interpolated (log-log) between
   the budget's shapes, so the same FLOPs formula sizes runs and optima.
2. Power laws N_opt = k_N·C^a, D_opt = k_D·C^b and L_opt = k_L·C^-gamma (least squares in log-log; the
   last is Kaplan's and GPT-3's form, without an irreducible loss) and the frontier
   L(C) = E + A·C^-alpha (E profiled over a grid, A and alpha linear in log space for each E, then a few
   Gauss-Newton steps in loss space).
3. Intervals: a residual bootstrap over runs: every budget's parabola residuals are resampled (with
   replacement, a seeded generator) onto its fitted curve, everything is refitted, and the 2.5/97.5
   percentiles are reported. Resampled fits whose vertex leaves the ladder are dropped and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpt3lab.errors import UserError

CI = (2.5, 97.5)


class FitError(UserError):
    """The runs cannot support the fit (too few sizes, no minimum inside the ladder, too few budgets)."""


@dataclass
class Run:
    """One finished run: its budget (FLOPs), parameters, FLOPs per token and held-out loss."""
    budget: float
    params: float
    flops_per_token: float
    loss: float


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def isoflop_minimum(budget: float, params, losses, flops_per_token) -> dict:
    """Vertex of the parabola loss(ln N) through one budget's runs: N_opt, D_opt, L_opt and the curve.

    FitError with fewer than 3 distinct sizes, when the best run is the smallest/largest size, or when the
    vertex lies outside the ladder ("extend the ladder below/above")."""
    n, y, f = (np.asarray(v, dtype=float) for v in (params, losses, flops_per_token))
    order = np.argsort(n)
    n, y, f = n[order], y[order], f[order]
    if len(np.unique(n)) < 3:
        raise FitError(f"budget C={_fmt(budget)}: {len(np.unique(n))} model size(s) finished; an IsoFLOP "
                       f"parabola needs at least 3 sizes per budget (add sizes with --sizes or --per-budget)")
    x = np.log(n)
    c2, c1, c0 = np.polyfit(x, y, 2)
    best = int(np.argmin(y))
    xv = -c1 / (2 * c2) if c2 > 0 else None       # a concave fit has no minimum: the lower end decides
    if best == 0 or (xv is not None and xv < x[0]) or (xv is None and y[0] <= y[-1]):
        side, edge = "below", n[0]
    elif best == len(n) - 1 or xv is None or xv > x[-1]:
        side, edge = "above", n[-1]
    else:
        side = None
    if side is not None:
        raise FitError(f"budget C={_fmt(budget)}: the IsoFLOP minimum is at or beyond the "
                       f"{'smallest' if side == 'below' else 'largest'} size (N={_fmt(edge)}), not inside the "
                       f"ladder; extend the ladder {side} (add {'smaller' if side == 'below' else 'larger'} sizes)")
    n_opt = math.exp(xv)
    fpt = math.exp(np.interp(xv, x, np.log(f)))
    return {"budget": budget, "n_opt": n_opt, "d_opt": budget / fpt, "l_opt": float(np.polyval([c2, c1, c0], xv)),
            "parabola": [float(c2), float(c1), float(c0)], "sizes": len(n)}


def power_law(x, y) -> tuple[float, float]:
    """(k, exponent) of y = k·x^exponent by least squares in log-log."""
    if len(x) < 2:
        raise FitError(f"a power law needs optima at 2 or more budgets, got {len(x)}")
    slope, icpt = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(math.exp(icpt)), float(slope)


def _profile(x: np.ndarray, y: np.ndarray, es: np.ndarray):
    """For each E in es: A, alpha of the log-space line log(y - E) = log A - alpha·x, and the loss-space SSE."""
    ly = np.log(y[None, :] - es[:, None])                            # (G, n)
    xm = x - x.mean()
    slope = (ly - ly.mean(axis=1, keepdims=True)) @ xm / (xm @ xm)   # (G,)
    log_a = ly.mean(axis=1) - slope * x.mean()
    pred = es[:, None] + np.exp(log_a[:, None] + slope[:, None] * x[None, :])
    return np.exp(log_a), -slope, ((pred - y[None, :]) ** 2).sum(axis=1)


def loss_frontier(budgets, losses) -> dict:
    """E, A, alpha of L(C) = E + A·C^-alpha through (budget, L_opt) points (3 or more budgets)."""
    c, y = np.asarray(budgets, float), np.asarray(losses, float)
    if len(c) < 3:
        raise FitError(f"L(C) = E + A·C^-alpha has 3 parameters: it needs optima at 3 or more budgets, got {len(c)}")
    c0 = float(np.exp(np.mean(np.log(c))))          # fit in units of the geometric-mean budget: A stays O(1)
    cs = c / c0
    x = np.log(cs)
    es = np.min(y) * (1 - np.geomspace(1, 1e-6, 600))          # E from 0 to just below the lowest loss
    for _ in range(3):                                         # zoom in around the best E twice
        _, _, sse = _profile(x, y, es)
        i = int(np.argmin(sse))
        es = np.linspace(es[max(i - 1, 0)], es[min(i + 1, len(es) - 1)], 201)
    a, al, sse = _profile(x, y, es)
    i = int(np.argmin(sse))
    e, a, al = _gauss_newton(cs, y, float(es[i]), float(a[i]), float(al[i]))
    return {"E": e, "A": a * c0 ** al, "alpha": al}


def _gauss_newton(c, y, e, a, al, steps: int = 20):
    """Polish (E, A, alpha) in loss space (the grid fitted log(L - E)); keeps a step only if it helps."""
    p = np.array([e, a, al])
    f = lambda q: q[0] + q[1] * c ** -q[2]                     # noqa: E731
    err = float(np.sum((f(p) - y) ** 2))
    for _ in range(steps):
        j = np.stack([np.ones_like(c), c ** -p[2], -p[1] * np.log(c) * c ** -p[2]], axis=1)
        step, *_ = np.linalg.lstsq(j, y - f(p), rcond=None)
        q = p + step
        new = float(np.sum((f(q) - y) ** 2))
        if not (new < err and q[0] >= 0 and q[1] > 0):
            break
        p, err = q, new
    return float(p[0]), float(p[1]), float(p[2])


def group(runs: list[Run]) -> dict[float, list[Run]]:
    """Runs by budget, budgets ascending."""
    out: dict[float, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.budget, r.params)):
        out.setdefault(r.budget, []).append(r)
    return out


def fit_ladder(runs: list[Run], predict: list[float] = (), bootstrap: int = 200, seed: int = 0,
               exclude_edges: bool = False) -> dict:
    """Everything above for a set of finished runs: per-budget optima, a, b, E/A/alpha with intervals, and
    the predictions of (N_opt, D_opt, L) at each budget in `predict`.

    exclude_edges: a budget whose parabola cannot be placed (too few sizes, minimum at the ladder's edge) is
    left out and its FitError message kept in out["excluded"], instead of failing the whole fit."""
    by, excluded, optima = group(runs), {}, []
    for c, rs in list(by.items()):
        try:
            optima.append(isoflop_minimum(c, [r.params for r in rs], [r.loss for r in rs],
                                          [r.flops_per_token for r in rs]))
        except FitError as e:
            if not exclude_edges:
                raise
            excluded[c] = str(e)
            del by[c]
    if not optima:
        raise FitError("no budget has its IsoFLOP minimum inside the ladder: " + "; ".join(excluded.values()))
    point = _laws(optima)
    samples, dropped = _bootstrap(by, optima, bootstrap, seed)
    out = {"optima": optima, "laws": {}, "excluded": [{"budget": c, "reason": m} for c, m in excluded.items()],
           "bootstrap": {"samples": len(samples), "dropped": dropped,
                         "method": "residual bootstrap over runs, per budget"}}
    for key, value in point.items():
        vals = [s[key] for s in samples if key in s]
        ci = [float(np.percentile(vals, q)) for q in CI] if len(vals) >= 10 else None
        out["laws"][key] = {"value": value, "ci95": ci}
    out["predictions"] = [predict_at(c, point, samples) for c in predict]
    return out


def _laws(optima: list[dict]) -> dict:
    """a, b, gamma (and k_N, k_D, k_L) from 2+ budgets; E, A, alpha from 3+."""
    c = [o["budget"] for o in optima]
    out = {}
    if len(optima) >= 2:
        out["k_N"], out["a"] = power_law(c, [o["n_opt"] for o in optima])
        out["k_D"], out["b"] = power_law(c, [o["d_opt"] for o in optima])
        k_l, slope = power_law(c, [o["l_opt"] for o in optima])    # E = 0: Kaplan's and GPT-3's form
        out["k_L"], out["gamma"] = k_l, -slope
    if len(optima) >= 3:
        fr = loss_frontier(c, [o["l_opt"] for o in optima])
        out.update(E=fr["E"], A=fr["A"], alpha=fr["alpha"])
    return out


def _bootstrap(by: dict, optima: list[dict], n: int, seed: int) -> tuple[list[dict], int]:
    rng = np.random.default_rng(seed)
    samples, dropped = [], 0
    for _ in range(n):
        opt = []
        try:
            for o, (c, rs) in zip(optima, by.items()):
                x = np.log([r.params for r in rs])
                fitted = np.polyval(o["parabola"], x)
                resid = np.array([r.loss for r in rs]) - fitted
                y = fitted + rng.choice(resid, size=len(resid), replace=True)
                opt.append(isoflop_minimum(c, [r.params for r in rs], y, [r.flops_per_token for r in rs]))
            samples.append(_laws(opt))
        except (FitError, np.linalg.LinAlgError, ValueError, FloatingPointError):
            dropped += 1
    return samples, dropped


def predict_at(budget: float, laws: dict, samples: list[dict] = ()) -> dict:
    """(N_opt, D_opt, L) at `budget` from the fitted laws, each with a bootstrap interval when available."""
    def values(p):
        v = {}
        if "a" in p:
            v["n_opt"] = p["k_N"] * budget ** p["a"]
            v["d_opt"] = p["k_D"] * budget ** p["b"]
        if "E" in p:
            v["loss"] = p["E"] + p["A"] * budget ** -p["alpha"]
        return v
    point, draws = values(laws), [values(s) for s in samples]
    out = {"budget": budget}
    for k, v in point.items():
        vals = [d[k] for d in draws if k in d]
        out[k] = {"value": v, "ci95": [float(np.percentile(vals, q)) for q in CI] if len(vals) >= 10 else None}
    return out


def holdout(runs: list[Run], bootstrap: int = 200, seed: int = 0, exclude: set = frozenset()) -> dict:
    """Fit on every budget but the largest; predict the largest budget's best held-out loss.
    exclude: budgets left out of the fit (their minimum is not inside the ladder)."""
    by = group(runs)
    if len(set(by) - set(exclude)) < 4:
        raise FitError(f"the hold-out check fits L(C) on all budgets but the largest: it needs 4 or more budgets "
                       f"with a minimum inside the ladder, got {len(set(by) - set(exclude))}")
    last = max(by)
    fit = fit_ladder([r for r in runs if r.budget != last and r.budget not in exclude], predict=[last],
                     bootstrap=bootstrap, seed=seed)
    pred = fit["predictions"][0]["loss"]
    best = min(r.loss for r in by[last])
    return {"budget": last, "predicted": pred["value"], "ci95": pred["ci95"], "observed_best": float(best),
            "error": float((pred["value"] - best) / best)}
