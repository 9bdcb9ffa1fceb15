"""`gpt3lab tokenizer encode|decode|train|info`.

encode: stdin text -> space-separated ids on stdout ("<|endoftext|>" is the special token).
decode: whitespace-separated ids on stdin -> text on stdout (exact bytes).
train:  SOURCE... --vocab-size N --out DIR -> DIR/gpt3lab_tokenizer.json.
"""
from __future__ import annotations

import argparse
import sys

from gpt3lab.argtypes import int_range
from gpt3lab.errors import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_ in (("encode", "stdin text -> ids"), ("decode", "stdin ids -> text"),
                        ("info", "name and vocabulary size")):
        a = sub.add_parser(name, help=help_)
        a.add_argument("--tokenizer", default="gpt2",
                       help="gpt2 | saved tokenizer dir/file | data dir | checkpoint or run dir | HF dir (default gpt2)")
    t = sub.add_parser("train", help="train a byte-level BPE on SOURCEs")
    t.add_argument("sources", nargs="+", metavar="SOURCE", help="files, dirs, globs, JSONL, `shakespeare`")
    t.add_argument("--vocab-size", type=int_range(257, 2**32), required=True, help="total ids incl. <|endoftext|> (>= 257)")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict")


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        from gpt3lab.data.sources import read_documents
        from gpt3lab.tokenizer import Tokenizer
        docs = read_documents(args.sources, args.encoding_errors)
        tok = Tokenizer.train((d.text for d in docs), args.vocab_size)
        print(f"{tok.save(args.out)}: {tok.name} ({tok.vocab_size} ids)")
        return 0
    from gpt3lab.checkpoint import resolve_tokenizer
    tok = resolve_tokenizer(args.tokenizer)
    if args.action == "info":
        print(f"{tok.name} vocab_size={tok.vocab_size} eot_id={tok.eot_id}")
    elif args.action == "encode":
        print(" ".join(map(str, tok.encode(sys.stdin.read()))))
    else:
        sys.stdout.buffer.write(tok.decode_bytes(_parse_ids(sys.stdin.read())))
        sys.stdout.flush()
    return 0


def _parse_ids(text: str) -> list[int]:
    """Whitespace-separated token ids; a word that is not an integer raises DataError naming it."""
    ids = []
    for word in text.split():
        try:
            ids.append(int(word))
        except ValueError:  # also "²", which str.isdigit() accepts but int() refuses
            raise DataError(f"decode input {word!r} is not a token id; "
                            f"pass whitespace-separated integers") from None
    return ids
