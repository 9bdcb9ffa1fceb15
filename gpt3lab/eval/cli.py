"""`gpt3lab eval CHECKPOINT --task NAME|TASK_FILE [--shots 0,1,8] ...` and
`gpt3lab eval CHECKPOINT --perplexity TEXT_FILE`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt3lab.argtypes import add_quantize_argument, positive_int, seed_int
from gpt3lab.devices import DEVICE_HELP, resolve_device
from gpt3lab.errors import ConfigError, DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run directory")
    p.add_argument("--task", action="append", default=[],
                   help="built-in task name or task file (.jsonl / .json spec); repeat or comma-separate")
    p.add_argument("--shots", default="0,1,8", help="comma-separated numbers of in-context examples (default 0,1,8)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N items of each task")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of example sampling and built-in task generation")
    p.add_argument("--n", type=positive_int, default=200, help="items generated for built-in tasks (default 200)")
    p.add_argument("--text", help="text file the `lambada` task cuts passages from "
                                  "(default: held-out plays of the bundled Shakespeare)")
    p.add_argument("--strict-shots", action="store_true",
                   help="error when k examples do not fit the context, instead of dropping examples")
    p.add_argument("--show-prompt", action="store_true", help="print the exact prompt of the first item per task x k")
    p.add_argument("--json", help="write results as JSON to this file")
    p.add_argument("--plot", help="write a PNG of accuracy vs number of examples")
    p.add_argument("--perplexity", metavar="TEXT_FILE", help="report perplexity and bits/byte of a text file")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="rolling-window advance for --perplexity in tokens (default context/2)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_quantize_argument(p)
    p.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and exit")


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--shots {text!r}: expected comma-separated integers, e.g. --shots 0,1,8") from None
    if not shots or any(k < 0 for k in shots):
        raise ConfigError(f"--shots {text!r}: expected non-negative integers, e.g. --shots 0,1,8")
    return shots


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start}; convert the file to UTF-8") from None


def _perplexity(model, tok, args) -> int:
    from gpt3lab.eval.harness import save_json
    from gpt3lab.eval.scoring import perplexity

    text = _read_text(args.perplexity)
    ids = tok.encode_ordinary(text)
    if not ids:
        raise DataError(f"{args.perplexity} is empty; nothing to score")
    C = model.config.context
    if args.stride is not None and not 1 <= args.stride <= C:
        raise ConfigError(f"--stride {args.stride} must be in 1..{C} (the model's context)")
    r = perplexity(model, ids, len(text.encode("utf-8")), tok.eot_id, args.stride)
    print(f"{args.perplexity}: {r.n_tokens} tokens, {r.n_bytes} bytes, {r.n_windows} windows")
    print(f"loss {r.loss:.4f} nats/token  perplexity {r.perplexity:.3f}  bits/byte {r.bits_per_byte:.4f}")
    if args.json:
        save_json({"file": args.perplexity, "tokens": r.n_tokens, "bytes": r.n_bytes, "windows": r.n_windows,
                   "loss": r.loss, "perplexity": r.perplexity, "bits_per_byte": r.bits_per_byte}, args.json)
    return 0


def _check_output(path: str | None, flag: str) -> None:
    """Fail before the (long) evaluation, not after it, when an output file cannot be written."""
    if path and not Path(path).resolve().parent.is_dir():
        raise ConfigError(f"{flag} {path}: directory {Path(path).resolve().parent} does not exist; create it first")


def run(args: argparse.Namespace) -> int:
    from gpt3lab.eval import harness
    from gpt3lab.eval.tasks import builtin_names, get_task

    if args.list_tasks:
        print("\n".join(builtin_names()))
        return 0
    if not args.checkpoint:
        raise ConfigError("missing CHECKPOINT: gpt3lab eval CHECKPOINT --task NAME|FILE (or --perplexity FILE)")
    if not args.task and not args.perplexity:
        raise ConfigError("nothing to do: pass --task NAME|FILE or --perplexity TEXT_FILE")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit} must be a positive integer")
    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot")
    shots = parse_shots(args.shots)
    text = _read_text(args.text) if args.text else None
    specs = [s for t in args.task for s in t.split(",") if s]
    tasks = [get_task(s, n=args.n, seed=args.seed, text=text) for s in specs]   # bad tasks fail before loading

    from gpt3lab import load
    model, tok = load(args.checkpoint, device=resolve_device(args.device), quantize=args.quantize,
                    compile=args.compile)
    if args.perplexity:
        _perplexity(model, tok, args)
    if not tasks:
        return 0

    def progress(task, r):
        print(f"  {task.name} k={r.k}: " + ", ".join(f"{m}={v:.4g}" for m, v in r.metrics.items()), file=sys.stderr)
        if args.show_prompt and r.examples:
            print(f"----- prompt: {task.name}, k={r.k}, item 0 -----\n{r.examples[0]['prompt']}"
                  f"\n----- gold: {r.examples[0]['gold']!r}  prediction: {r.examples[0]['prediction']!r}")

    results = harness.run(model, tok, tasks, shots, args.seed, args.limit, args.strict_shots, progress)
    print(harness.format_table(results))
    if args.json:
        harness.save_json({"checkpoint": str(args.checkpoint), "seed": args.seed, "limit": args.limit,
                           "shots": shots, "tasks": results}, args.json)
    if args.plot:
        harness.plot(results, args.plot, title=f"{Path(args.checkpoint).name}: in-context learning")
    return 0
