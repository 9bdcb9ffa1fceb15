"""`gpt3lab size`: parameters, FLOPs, memory, GPU-time and cost for a preset or a config.json.

    gpt3lab size gpt3-175b --gpu v100 --mfu 0.224 --price-per-hour 1.5
    gpt3lab size path/to/checkpoint/config.json --json
    gpt3lab size runs/my_run              # a run dir: its newest checkpoint's config
    gpt3lab size --all                    # one table for the eight GPT-3 sizes of the paper
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gpt3lab import sizing
from gpt3lab.argtypes import float_range, positive_float, positive_int
from gpt3lab.config import ModelConfig, from_dict
from gpt3lab.errors import ConfigError, UserError
from gpt3lab.presets import GPT3_PRESETS, PRESETS, get_preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="preset name (e.g. gpt3-175b), checkpoint or run directory, or path "
                   "to a config.json (a bare model config or a checkpoint's {\"model\": {...}} file)")
    p.add_argument("--all", action="store_true", help="table for the eight GPT-3 presets (Table 2.1)")
    p.add_argument("--tokens", type=positive_float, default=300e9, help="training tokens (default 300e9, as GPT-3)")
    p.add_argument("--gpu", default="h100", help=f"one of {', '.join(sizing.GPUS)} (default h100)")
    p.add_argument("--mfu", type=float_range(0.0, 1.0, lo_open=True), default=0.4, help="model FLOPs utilisation in (0, 1] (default 0.4)")
    p.add_argument("--price-per-hour", type=positive_float, default=None,
                   help="USD per GPU-hour (default: the GPU table's illustrative price)")
    p.add_argument("--world-size", type=positive_int, default=8, help="GPUs, for per-GPU memory and wall-clock")
    p.add_argument("--batch-tokens", type=positive_float, default=None,
                   help="tokens per optimizer step, for the step count (default: preset/checkpoint value)")
    p.add_argument("--micro-batch", type=positive_int, default=1, help="sequences per GPU per micro-batch "
                   "(activation memory; default 1)")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")


def load_model_config(spec: str) -> tuple[ModelConfig, dict]:
    """Resolve a preset name or config.json path to (ModelConfig, extras: paper_params, batch_tokens)."""
    if spec in PRESETS:
        pre = get_preset(spec)
        return pre.model_config(), {"paper_params": pre.paper_params,
                                    "batch_tokens": pre.paper_batch_tokens or pre.train.get("batch_tokens")}
    path = Path(spec)
    if not (spec.endswith(".json") or path.exists()):
        get_preset(spec)   # raises ConfigError listing the presets
    if path.is_dir():  # a checkpoint or a run dir (-> its newest checkpoint)
        from gpt3lab.checkpoint import read_config, resolve
        ckpt = resolve(path)
        return _from_data(read_config(ckpt), str(ckpt / "config.json"))
    if not path.is_file():
        raise UserError(f"config file {spec!r} does not exist; pass a preset name "
                        f"({', '.join(PRESETS)}), a checkpoint or run directory, or a path to a config.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{spec}: not a readable JSON file ({e}); expected a model config or a "
                          f"checkpoint config.json") from None
    return _from_data(data, spec)


def _from_data(data, spec: str) -> tuple[ModelConfig, dict]:
    if isinstance(data, dict) and isinstance(data.get("model"), dict):   # checkpoint: {"model": ..., "train": ...}
        train = data.get("train") if isinstance(data.get("train"), dict) else {}
        return from_dict(ModelConfig, data["model"], f"{spec}: model"), {"batch_tokens": train.get("batch_tokens")}
    return from_dict(ModelConfig, data, spec), {}


def _int_batch_tokens(value: float | None) -> int | None:
    if value is None:
        return None
    if not value > 0 or value != int(value):
        raise ConfigError(f"--batch-tokens={value} must be a positive whole number of tokens")
    return int(value)


def _report(args, name: str, cfg: ModelConfig, extras: dict) -> dict:
    batch = _int_batch_tokens(args.batch_tokens) or extras.get("batch_tokens")
    return sizing.size_report(cfg, name=name, tokens=args.tokens, gpu=args.gpu, mfu=args.mfu,
                              price_per_hour=args.price_per_hour, world_size=args.world_size,
                              batch_tokens=batch, micro_batch=args.micro_batch,
                              paper_params=extras.get("paper_params"))


def build_reports(args) -> list[dict]:
    """The report(s) `gpt3lab size` prints for parsed `args`."""
    if args.all:
        if args.model:
            raise ConfigError(f"--all prints every GPT-3 preset; drop {args.model!r} or drop --all")
        return [_report(args, n, *load_model_config(n)) for n in GPT3_PRESETS]
    if not args.model:
        raise ConfigError("give a preset name (e.g. gpt3-175b), a config.json path, or --all")
    return [_report(args, args.model, *load_model_config(args.model))]


def run(args) -> int:
    reports = build_reports(args)
    if args.json:
        print(json.dumps(reports if args.all else reports[0], indent=2))
        return 0
    if args.all:
        print(format_table(reports))
        print()
        print(sizing.lambda_explanation())
    else:
        print(format_report(reports[0]))
        if _is_175b(reports[0]):
            print()
            print(sizing.lambda_explanation())
    return 0


def _is_175b(report: dict) -> bool:
    return report["config"]["n_layer"] == 96 and report["config"]["d_model"] == 12288


# ---------------------------------------------------------------------------------------------
# formatting


def fmt_count(x: float) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _mem_unit(x: float) -> tuple[float, str]:
    """Largest of GB / MB / KB (powers of 1000) that keeps `x` >= 1."""
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if x >= div:
            return div, unit
    return 1.0, "B"


def fmt_num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def fmt_usd(x: float) -> str:
    return f"${x / 1e6:.2f}M" if x >= 1e6 else f"${x:,.0f}" if x >= 100 else f"${x:.3g}"


def format_report(r: dict) -> str:
    """Human-readable report for one model."""
    c, p, f, t, g = r["config"], r["params"], r["train_flops"], r["time"], r["gpu"]
    lines = [f"{r['name']}: {c['n_layer']} layers, d_model {c['d_model']}, {c['n_head']} heads x "
             f"{c['d_head']}, d_ff {c['d_ff']}, context {c['context']}, vocab {c['vocab_size']}, "
             f"attention {c['attention_pattern']}"
             + (f" (window {c['local_window']})" if c["attention_pattern"] != "dense" else ""),
             "",
             f"parameters  {p['total']:,} ({fmt_count(p['total'])})"
             + (f"  vs paper {fmt_count(r['paper_params'])}: {p['total'] / r['paper_params'] - 1:+.1%}"
                if r["paper_params"] else "")]
    for k in ("wte", "wpe", "attention", "mlp", "norms"):
        lines.append(f"  {k:<10}{p[k]:>18,}  {p[k] / p['total']:6.1%}")
    lines += ["",
              f"training on {fmt_count(r['tokens'])} tokens"
              + (f" ({r['steps']:,} steps of {r['batch_tokens']:,} tokens)" if r["steps"] else ""),
              f"  6ND        {f['6ND']:.3e} FLOPs",
              f"  attention  {f['attention']:.3e} FLOPs (QK^T and AV; banded layers use the window)",
              f"  total      {f['total']:.3e} FLOPs",
              f"generation  {r['inference_flops_per_token']:.3e} FLOPs per token (2N + attention, "
              f"mean over a full context)",
              ""]
    lines += _memory_lines(r)
    lines += ["",
              f"{g['label']}: {g['peak_flops'] / 1e12:.0f} TFLOP/s peak x MFU {r['mfu']:.2f} = "
              f"{t['sustained_flops'] / 1e12:.0f} TFLOP/s sustained",
              f"  {fmt_num(t['gpu_hours'])} GPU-hours = {fmt_num(t['gpu_years'])} GPU-years; "
              f"{fmt_num(t['wall_days'])} days on {r['world_size']} GPUs",
              f"  cost {fmt_usd(t['cost_usd'])} at ${t['price_per_hour']:.2f}/GPU-hour",
              "", "assumptions:"] + [f"  - {a}" for a in r["assumptions"]]
    return "\n".join(lines)


def _memory_lines(r: dict) -> list[str]:
    cap = r["gpu"]["memory_gb"] * 1e9
    div, unit = _mem_unit(r["memory"]["ddp"]["total"])
    lines = [f"memory per GPU, world size {r['world_size']}, micro-batch {r['micro_batch']} x "
             f"{r['config']['context']} tokens (16 B/param states)",
             f"  {'':<12}{'weights':>10}{'grads':>10}{'adam':>10}{'activ.':>10}{'ckpt':>10}"
             f"{'total':>10}{'w/ ckpt':>10}"]
    for mode, m in [*r["memory"].items(), *r.get("memory_tp", {}).items()]:
        cells = [m[k] / div for k in ("weights", "grads", "adam", "activations", "activations_ckpt",
                                      "total", "total_ckpt")]
        fits = "fits" if m["total_ckpt"] <= cap else f"> {r['gpu']['memory_gb']:.0f} GB"
        lines.append(f"  {mode:<12}" + "".join(f"{x:>10.1f}" for x in cells) + f"  {unit} ({fits} w/ ckpt)")
    return lines


def format_table(reports: list[dict]) -> str:
    """One row per model: params vs paper, FLOPs, memory and time/cost."""
    r0 = reports[0]
    head = (f"{'model':<12}{'params':>10}{'paper':>8}{'diff':>7}{'train FLOPs':>12}{'attn':>6}"
            f"{'FLOPs/tok':>11}{'DDP GB':>8}{'FSDP GB':>9}{'act ckpt':>9}{'GPU-years':>10}{'cost':>10}")
    lines = [f"{fmt_count(r0['tokens'])} tokens, {r0['gpu']['label']} at MFU {r0['mfu']}, "
             f"${r0['time']['price_per_hour']:.2f}/GPU-hour, world size {r0['world_size']}, "
             f"micro-batch {r0['micro_batch']}; memory = per-GPU states + activations with checkpointing",
             head, "-" * len(head)]
    for r in reports:
        p, f, m = r["params"]["total"], r["train_flops"], r["memory"]
        diff = f"{p / r['paper_params'] - 1:+.1%}" if r["paper_params"] else ""
        paper = fmt_count(r["paper_params"]) if r["paper_params"] else ""
        lines.append(f"{r['name']:<12}{fmt_count(p):>10}{paper:>8}{diff:>7}{f['total']:>12.3e}"
                     f"{f['attention'] / f['total']:>6.1%}{r['inference_flops_per_token']:>11.2e}"
                     f"{m['ddp']['total_ckpt'] / 1e9:>8.1f}{m['fsdp']['total_ckpt'] / 1e9:>9.1f}"
                     f"{m['ddp']['activations_ckpt'] / 1e9:>9.1f}{r['time']['gpu_years']:>10.2f}"
                     f"{fmt_usd(r['time']['cost_usd']):>10}")
    return "\n".join(lines)
