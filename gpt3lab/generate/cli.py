"""`gpt3lab generate CHECKPOINT_OR_RUN_DIR --prompt TEXT`: sample from a checkpoint, streamed to stdout.

Every prompt is submitted to the batching engine (gpt3lab.generate.engine) at once, so a file of
prompts decodes as one continuous batch; outputs are printed in prompt order.

The prompt comes from --prompt, from --prompt-file (one prompt per line, or JSONL objects with a
"prompt" key), or from stdin. Only the completion is printed (--echo prints the prompt first).
With several prompts or --n > 1, each sample is preceded by a `=== prompt P sample S ===` line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gpt3lab.argtypes import MAX_INT, add_quantize_argument, float_range, int_range, seed_int
from gpt3lab.devices import DEVICE_HELP, resolve_device
from gpt3lab.generate.api import InvalidRequestError, SamplingParams
from gpt3lab.errors import ConfigError, DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory or run directory (newest checkpoint)")
    p.add_argument("--prompt", help="prompt text (default: read stdin)")
    p.add_argument("--prompt-file",
                   help="file with one prompt per line (\\n in a line = newline), or JSONL with a 'prompt' key")
    p.add_argument("--max-tokens", type=sampling_arg("max_tokens", WHOLE), default=64, help="tokens to generate per sample (default 64)")
    p.add_argument("--temperature", type=sampling_arg("temperature", NUMBER), default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=sampling_arg("top_k", WHOLE), default=None, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=sampling_arg("top_p", NUMBER), default=None, help="nucleus: smallest set with mass >= p")
    p.add_argument("--seed", type=seed_int, default=None, help="same seed -> same text")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")
    p.add_argument("--n", type=sampling_arg("n", WHOLE), default=1, help="samples per prompt (default 1)")
    p.add_argument("--no-stream", action="store_true", help="print each sample when it is complete")
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_quantize_argument(p)
    p.add_argument("--sliding-window", action="store_true",
                   help="let --max-tokens run past the context: each token past it is predicted from the last "
                        "`context` tokens, recomputed (a full forward per token)")
    add_tokenizer_override(p)


WHOLE, NUMBER = int_range(-MAX_INT, MAX_INT), float_range(-float("inf"))   # parsing only: no range rules


def sampling_arg(name: str, parse):
    """An argparse type for a SamplingParams field: parsed, then checked by SamplingParams.validate itself
    (the one rule, reported as a usage error naming the flag)."""
    def check(text: str):
        value = parse(text)                 # not a (finite, sane) number: argparse's usage error
        try:
            SamplingParams(**{name: value}).validate(1 << 62, 1 << 62)
        except InvalidRequestError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value
    check.__name__ = name
    return check


def add_tokenizer_override(p: argparse.ArgumentParser) -> None:
    """--tokenizer for every command that loads a checkpoint (generate, serve)."""
    p.add_argument("--tokenizer", metavar="gpt2|PATH", default=None,
                   help="use this tokenizer instead of the checkpoint's (e.g. gpt2 for a weights-only import)")


def read_prompts(args) -> list[str]:
    if args.prompt is not None and args.prompt_file:
        raise ConfigError("give either --prompt or --prompt-file, not both")
    if args.prompt is not None:
        return [args.prompt]
    if args.prompt_file:
        return prompts_from_file(Path(args.prompt_file))
    text = sys.stdin.read()
    return [text[:-1] if text.endswith("\n") else text]


def prompts_from_file(path: Path) -> list[str]:
    """One prompt per non-empty line; a file whose lines are JSON objects uses their "prompt" field."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--prompt-file {path}: cannot read it ({e})") from None
    if not lines:
        raise DataError(f"--prompt-file {path}: holds no prompts")
    if not lines[0].lstrip().startswith("{"):
        return [line.replace("\\n", "\n") for line in lines]
    prompts = []
    for no, line in enumerate(lines, 1):
        try:
            prompts.append(json.loads(line)["prompt"])
        except (ValueError, KeyError, TypeError):
            raise DataError(f"--prompt-file {path}:{no}: expected a JSON object with a \"prompt\" string") from None
    return prompts


def run(args) -> int:
    """All prompts go to the batching engine at once; one prompt with n=1 streams, the rest print when done."""
    from gpt3lab import load
    from gpt3lab.generate.engine import Engine

    prompts = read_prompts(args)
    model, tokenizer = load(args.checkpoint, device=resolve_device(args.device), tokenizer=args.tokenizer,
                            quantize=args.quantize, compile=args.compile)                                 # LoRA too
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k or 0,
                            top_p=1.0 if args.top_p is None else args.top_p, n=args.n, seed=args.seed,
                            stop=list(args.stop), sliding_window=args.sliding_window)
    engine = Engine(model, tokenizer)
    try:
        handles = [engine.submit(tokenizer.encode(p) or [tokenizer.eot_id], params) for p in prompts]
        _print_all(sys.stdout, prompts, handles, args)
    finally:
        engine.shutdown(cancel_running=True)
    return 0


def _print_all(out, prompts: list[str], handles: list, args) -> None:
    headers = len(prompts) > 1 or args.n > 1
    live = not args.no_stream and len(prompts) == 1 and args.n == 1
    for pi, (prompt, h) in enumerate(zip(prompts, handles)):
        texts: dict[int, list[str]] = {}
        if live:
            _header(out, headers, pi, 0, prompt, args.echo)
        for ev in h:     # the engine keeps decoding the later prompts meanwhile
            if live:
                out.write(ev.text)
                out.flush()
            else:
                texts.setdefault(ev.index, []).append(ev.text)
        if live:
            out.write("\n")
        for i in sorted(texts):
            _header(out, headers, pi, i, prompt, args.echo)
            out.write("".join(texts[i]) + "\n")
        out.flush()


def _header(out, headers: bool, pi: int, i: int, prompt: str, echo: bool) -> None:
    if headers:
        out.write(f"=== prompt {pi + 1} sample {i + 1} ===\n")
    if echo:
        out.write(prompt)
