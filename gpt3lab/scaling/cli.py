"""`gpt3lab scaling --data DATA --out DIR --budgets C1,C2,... [--sizes N1,N2,... | --per-budget K] [--predict C]`:
train an IsoFLOP ladder of ordinary `gpt3lab train` runs, fit the scaling laws, predict.

    gpt3lab scaling --data data/shakespeare-bytes --out runs/scaling --budgets 1e12,2e12,4e12,8e12
    gpt3lab scaling ... --print-commands      # plan only: the `gpt3lab train` lines, for a cluster scheduler
    gpt3lab scaling --fit runs/scaling        # fit whatever runs have finished

Re-running the same command skips finished runs and resumes an interrupted one. Writes DIR/results.json,
DIR/results.csv and DIR/scaling.png.
"""
from __future__ import annotations

import argparse
import csv
import io
import shlex
import time
from dataclasses import asdict
from pathlib import Path

from gpt3lab.argtypes import nonneg_int, positive_float, positive_int, seed_int
from gpt3lab.errors import ConfigError
from gpt3lab.scaling import fit, ladder, shapes

# published exponents, for the report (Hoffmann et al. 2022 Table 2; Kaplan et al. 2020; Brown et al. 2020 Fig. 3.1)
REFERENCES = {
    "chinchilla": {"a": "0.49-0.50 (Approach 2: 0.49, Approach 1: 0.50)", "b": "0.50-0.51",
                   "L(N,D)": "E=1.69 + 406.4/N^0.34 + 410.7/D^0.28 (Approach 3)"},
    "kaplan": {"a": "0.73 (N_opt ∝ C^0.73)", "gamma": "0.050 (L ∝ C^-0.050)"},
    "gpt3": {"gamma": "0.048 (L = 2.57·C^-0.048, C in PF-days, Figure 3.1)"},
}


def _floats(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 1e12,3e12") from None
    if not vals or any(not (v > 0 and v < float("inf")) for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive numbers, e.g. 1e12,3e12")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data dir (gpt3lab prepare); with --fit defaults "
                   "to the ladder's")
    p.add_argument("--out", metavar="DIR", help="ladder dir: runs/<budget>_<shape>/ train run dirs + results")
    p.add_argument("--budgets", type=_floats, metavar="C1,C2,...", help="compute budgets in training FLOPs "
                   "(gpt3lab size's formula: 6N + attention per token)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sizes", type=_floats, metavar="N1,N2,...", help="parameter counts trained at every budget "
                   "(each mapped to the shape rule's nearest shape)")
    g.add_argument("--per-budget", type=positive_int, default=5, metavar="K", help="sizes per budget, spread over a factor "
                   "--span of parameters around --tokens-per-param")
    p.add_argument("--span", type=positive_float, default=10.0, help="with --per-budget: the largest / smallest size")
    p.add_argument("--tokens-per-param", type=positive_float, default=20.0, help="with --per-budget: centre each "
                   "budget's sizes on the N trained on this many tokens per parameter (Chinchilla: ~20)")
    p.add_argument("--predict", type=_floats, default=[], metavar="C", help="budgets to predict N_opt, D_opt, loss at")
    p.add_argument("--fit", metavar="DIR", help="fit the finished runs of an existing ladder dir; trains nothing")
    p.add_argument("--print-commands", action="store_true", help="write the plan and print the `gpt3lab train` "
                   "command lines of the unfinished runs (for a cluster scheduler); trains nothing")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences per step (every run)")
    p.add_argument("--context", type=positive_int, default=128, help="tokens per sequence (every run)")
    p.add_argument("--seed", type=seed_int, default=1337, help="train.seed of every run")
    p.add_argument("--eval-tokens", type=nonneg_int, default=131072,
                   help="held-out tokens (the val split's first) every run is evaluated on; 0 = all")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra `gpt3lab train --set` "
                   "for every run, e.g. train.precision=bf16")
    p.add_argument("--bootstrap", type=nonneg_int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--threads", type=positive_int, help="torch intra-op threads of every run (default: torch's; "
                   "tiny models on a small shared CPU run far faster on 1)")
    p.add_argument("--subprocess", action="store_true", help="launch each run as `python -m gpt3lab train ...` in "
                   "a subprocess (default: the same entry function in this process)")


def run(args: argparse.Namespace) -> int:
    if args.fit:
        s, runs = ladder.load_ladder(Path(args.fit))
        report(Path(args.fit), s, runs, args.predict, args.bootstrap, data=args.data)
        return 0
    if not (args.data and args.out and args.budgets):
        raise ConfigError("gpt3lab scaling needs --data DATA_DIR, --out DIR and --budgets C1,C2,... "
                          "(or --fit DIR to fit an existing ladder)")
    if args.per_budget < 3:
        raise ConfigError(f"--per-budget {args.per_budget}: an IsoFLOP parabola needs at least 3 sizes per budget")
    s = ladder.Settings(data=args.data, budgets=sorted(args.budgets), sizes=args.sizes, per_budget=args.per_budget,
                        span=args.span, tokens_per_param=args.tokens_per_param, batch_size=args.batch_size, context=args.context, seed=args.seed,
                        eval_tokens=args.eval_tokens, overrides=list(args.set))
    return run_ladder(Path(args.out), s, predict=args.predict, bootstrap=args.bootstrap,
                      print_commands=args.print_commands, in_process=not args.subprocess, threads=args.threads)


def run_ladder(out: Path, s: ladder.Settings, *, predict=(), bootstrap: int = 200, print_commands: bool = False,
               in_process: bool = True, threads: int | None = None) -> int:
    """Plan, (print or) train and evaluate, then fit and report. threads: torch intra-op threads of the runs
    (in this process, and OMP_NUM_THREADS of subprocesses)."""
    runs = ladder.plan(s)
    ladder.save_plan(out, s, runs)
    if print_commands:
        for r in runs:
            argv = ladder.command_for(out, s.data, r)
            if argv is not None:
                print("gpt3lab " + shlex.join(argv))
        return 0
    total = sum(r.flops for r in runs)
    print(f"scaling: {len(runs)} runs, {len(s.budgets)} budgets, {total:.3g} FLOPs in all, into {out}\n"
          f"{shapes.rule_text()}")
    t0 = time.perf_counter()
    timing = ladder.execute(out, s, runs, in_process=in_process, threads=threads)
    timing["wall_s"] = time.perf_counter() - t0
    ladder.write_json(out / "timing.json", timing)
    report(out, s, runs, predict, bootstrap)
    return 0


def report(out: Path, s: ladder.Settings, runs: list[ladder.RunPlan], predict, bootstrap: int,
           data: str | None = None) -> dict:
    """Fit the finished runs; write results.json, results.csv and scaling.png; print the summary."""
    done = ladder.finished(out, s, runs, data)
    rows = [{"name": r.name, "budget": r.budget, "params": r.params, "flops_per_token": r.flops_per_token,
             "tokens": r.tokens, "flops": r.flops, "steps": r.steps, "lr": r.lr, "val_loss": e["val_loss"],
             **{k: r.model[k] for k in ("n_layer", "d_model", "n_head")}} for r, e in done]
    _write_csv(out / "results.csv", rows)
    planned = {}
    for r in runs:
        planned.setdefault(r.budget, set()).add(r.name)
    complete = [c for c, names in planned.items() if names <= {row["name"] for row in rows}]
    pending = sorted(set(planned) - set(complete))
    fit_runs = [fit.Run(x["budget"], x["params"], x["flops_per_token"], x["val_loss"]) for x in rows
                if x["budget"] in complete]
    results = {"ladder": asdict(s), "rules": shapes.rule_text(), "runs": rows, "pending_budgets": pending,
               "references": REFERENCES}
    try:
        if not fit_runs:
            raise fit.FitError(f"no budget of {out} has all its runs finished yet; nothing to fit")
        results["fit"] = fit.fit_ladder(fit_runs, predict=list(predict), bootstrap=bootstrap, exclude_edges=True)
        for e in results["fit"]["excluded"]:
            print(f"scaling: warning: left out of the fit: {e['reason']}")
        try:
            results["holdout"] = fit.holdout(fit_runs, bootstrap=bootstrap,
                                             exclude={e["budget"] for e in results["fit"]["excluded"]})
        except fit.FitError as e:
            results["holdout"] = {"skipped": str(e)}
    except fit.FitError as e:
        results["error"] = str(e)
        raise
    finally:
        from gpt3lab.scaling.plots import plot_ladder
        ladder.write_json(out / "results.json", results)
        if rows:
            plot_ladder(out / "scaling.png", rows, results.get("fit"), list(predict))
    print(summary(results, out))
    return results


def _write_csv(path: Path, rows: list[dict]) -> None:
    from gpt3lab.train.loop import write_text_atomically

    buf = io.StringIO()
    fields = ["name", "budget", "params", "n_layer", "d_model", "n_head", "flops_per_token", "tokens", "steps",
              "flops", "lr", "val_loss"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: row[k] for k in fields})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, buf.getvalue())


def _ci(v: dict, fmt: str = ".3f") -> str:
    ci = v.get("ci95")
    return f"{v['value']:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "")


def summary(results: dict, out: Path) -> str:
    """The printed report: optima per budget, exponents with 95% intervals beside the published ones."""
    lines = []
    f = results.get("fit")
    if not f:
        return f"scaling: wrote {out}/results.json, results.csv ({results.get('error', '')})"
    for o in f["optima"]:
        lines.append(f"  C={o['budget']:.3g}: N_opt={o['n_opt']:.4g}, D_opt={o['d_opt']:.4g} "
                     f"({o['d_opt'] / o['n_opt']:.1f} tokens/param), L_opt={o['l_opt']:.4f}")
    for e in f.get("excluded", []):
        lines.append(f"  C={e['budget']:.3g}: left out ({e['reason'].split(': ', 1)[-1]})")
    laws = f["laws"]
    if "a" in laws:
        lines.append(f"  a (N_opt ∝ C^a) = {_ci(laws['a'])}   Chinchilla 0.49-0.50, Kaplan 0.73")
        lines.append(f"  b (D_opt ∝ C^b) = {_ci(laws['b'])}   Chinchilla 0.50-0.51")
        lines.append(f"  gamma (L_opt ∝ C^-gamma) = {_ci(laws['gamma'], '.4f')}   Kaplan 0.050, GPT-3 0.048")
    if "E" in laws:
        lines.append(f"  L(C) = E + A·C^-alpha: E = {_ci(laws['E'], '.3f')}, A = {_ci(laws['A'], '.3g')}, "
                     f"alpha = {_ci(laws['alpha'], '.3f')}")
    for p in f["predictions"]:
        parts = [f"{k}={_ci(p[k], '.4g')}" for k in ("n_opt", "d_opt", "loss") if k in p]
        lines.append(f"  prediction at C={p['budget']:.3g}: " + ", ".join(parts))
    h = results.get("holdout", {})
    if "error" in h:
        lines.append(f"  hold-out: fitted without C={h['budget']:.3g}, predicted best loss {h['predicted']:.4f}, "
                     f"observed {h['observed_best']:.4f}: error {100 * h['error']:+.2f}%")
    elif h:
        lines.append(f"  hold-out: {h['skipped']}")
    if results["pending_budgets"]:
        lines.append("  budgets with unfinished runs (not fitted): "
                     + ", ".join(f"{c:.3g}" for c in results["pending_budgets"]))
    return "scaling: fit\n" + "\n".join(lines) + f"\nscaling: wrote {out}/results.json, results.csv, scaling.png"


__all__ = ["add_arguments", "run", "run_ladder", "report", "REFERENCES"]
