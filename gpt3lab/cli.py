"""`gpt3lab` command line: one subcommand per module, loaded lazily so `--help` stays fast.

Each command module exposes `add_arguments(parser)` and `run(args) -> int | None`.
User errors (gpt3lab.errors.UserError) print one line and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from gpt3lab.errors import UserError

# name -> (module, one-line help). Modules own their flags.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("gpt3lab.data.prepare", "tokenize a corpus into train/val token shards"),
    "tokenizer": ("gpt3lab.tokenizer_cli", "encode/decode/train tokenizers"),
    "train": ("gpt3lab.train.cli", "pretrain a GPT (one loop: CPU, GPU, torchrun)"),
    "generate": ("gpt3lab.generate.cli", "sample text from a checkpoint"),
    "download": ("gpt3lab.download", "download a pretrained GPT-2 (gpt2 ... gpt2-xl, or a hub id) as a checkpoint"),
    "convert": ("gpt3lab.convert", "import/export Hugging Face GPT-2 checkpoints"),
    "plot": ("gpt3lab.train.plot", "plot a run's loss curves to PNG"),
    "size": ("gpt3lab.sizing_cli", "parameters, FLOPs, memory, GPU-time and cost"),
    "presets": ("gpt3lab.presets_cli", "list the model presets (shapes, parameters, training defaults)"),
    "demo": ("gpt3lab.demo", "prepare Shakespeare, train the demo model, sample"),
    "eval": ("gpt3lab.eval.cli", "zero/one/few-shot evaluation and perplexity"),
    "distill": ("gpt3lab.distill.cli", "train a smaller student from a teacher's predictions (knowledge distillation)"),
    "finetune": ("gpt3lab.finetune.cli", "fine-tune (full or LoRA) on prompt/completion, chat or Alpaca JSONL"),
    "serve": ("gpt3lab.serve.cli", "OpenAI-compatible /v1/completions + /v1/chat/completions server + playground"),
    "compress": ("gpt3lab.compress", "compress/decompress a file with the model as the coder"),
    "export": ("gpt3lab.export_cli", "single-file model.safetensors checkpoint of a (sharded) run"),
    "scaling": ("gpt3lab.scaling.cli", "train an IsoFLOP ladder, fit the scaling laws, predict"),
}


def _load(name: str):
    module, _ = COMMANDS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise UserError(f"`gpt3lab {name}` is not available in this build ({module} is missing)") from e
        raise


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless it has no real default (None/False/[]) or the
    help text already states it."""

    def _get_help_string(self, action):
        help_ = action.help or ""
        d = action.default
        # `is`, not `in`: 0 and 0.0 equal False but are real defaults worth showing
        if (not action.option_strings or d is None or d is False or d is argparse.SUPPRESS or d == []
                or "default" in help_ or "%(default)" in help_):
            return help_
        return f"{help_} (default: %(default)s)"


def _command_word(argv: list[str]) -> str | None:
    """The COMMAND of a command line: its first word, after a leading -v/--verbose."""
    rest = argv[1:] if argv[:1] in (["-v"], ["--verbose"]) else argv
    return rest[0] if rest else None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from gpt3lab import __version__

    parser = argparse.ArgumentParser(prog="gpt3lab", description="A complete, readable GPT-3.")
    parser.add_argument("--version", action="version", version=f"gpt3lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say which malloc runs the model (also in `train`'s start-up summary); before COMMAND")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=DefaultsHelpFormatter)
        # only the chosen command's module is imported (and adds its flags)
        if name == _command_word(argv):
            _load(name).add_arguments(p)
    return parser


# commands that run the model for long enough that the allocator matters (see launcher.py)
HEAVY = {"train", "generate", "demo", "eval", "finetune", "serve", "compress", "distill", "scaling"}


def wants_fast_allocator(argv: list[str]) -> bool:
    """Whether this command line runs the model (a HEAVY command, not just its --help)."""
    return bool(argv) and argv[0] in HEAVY and not {"-h", "--help"} & set(argv)


def main(argv: list[str] | None = None) -> int:
    real = argv is None   # a real process: may re-exec itself under another malloc (never inside tests)
    argv = sys.argv[1:] if real else argv
    try:
        verbose = bool(argv) and argv[0] in ("-v", "--verbose")
        if real and wants_fast_allocator(argv[verbose:]):
            from gpt3lab.launcher import use_fast_allocator

            use_fast_allocator(announce=verbose)
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        rc = _load(args.command).run(args)
        return int(rc or 0)
    except UserError as e:
        print(f"gpt3lab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt3lab: interrupted", file=sys.stderr)
        return 130
