"""`gpt3lab tokenizer encode|decode|train|info`.

encode: TEXT (or stdin) -> one line per token, id and the token's text (`--ids-only`: space-separated ids).
decode: whitespace-separated ids on stdin -> text on stdout (exact bytes).
train:  SOURCE... --vocab-size N --out DIR -> DIR/gpt3lab_tokenizer.json; the same inputs as `prepare`
        (text, JSONL with --text-field, .gz/.zst, Parquet, saved datasets, `shakespeare`).
"""
from __future__ import annotations

import argparse
import sys
import warnings

from gpt3lab.argtypes import int_range
from gpt3lab.errors import DataError

TOKENIZER_HELP = "gpt2 | saved tokenizer dir/file | data dir | checkpoint or run dir | HF dir"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt3lab.cli import DefaultsHelpFormatter

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    kw = dict(formatter_class=DefaultsHelpFormatter)
    e = sub.add_parser("encode", help="TEXT (or stdin) -> ids and their pieces", **kw)
    e.add_argument("text", nargs="?", metavar="TEXT", help="text to encode (default: read stdin)")
    e.add_argument("--ids-only", action="store_true", help="print only the ids, space-separated, on one line")
    for name, help_ in (("decode", "stdin ids -> text"), ("info", "name and vocabulary size")):
        sub.add_parser(name, help=help_, **kw)
    for a in (e, sub.choices["decode"], sub.choices["info"]):
        a.add_argument("--tokenizer", default="gpt2", help=TOKENIZER_HELP)
    t = sub.add_parser("train", help="train a byte-level BPE on SOURCEs", **kw)
    t.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="files, dirs, globs: text, JSONL, .gz/.zst, Parquet, saved datasets; or `shakespeare`")
    t.add_argument("--vocab-size", type=int_range(257, 2**32), required=True, help="total ids incl. <|endoftext|> (>= 257)")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--text-field", default="text", help="JSONL field / Parquet or dataset column holding the text")
    t.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict")


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        return _train(args)
    from gpt3lab.checkpoint import resolve_tokenizer
    tok = resolve_tokenizer(args.tokenizer)
    if args.action == "info":
        print(f"{tok.name} vocab_size={tok.vocab_size} eot_id={tok.eot_id}")
    elif args.action == "encode":
        ids = tok.encode(args.text if args.text is not None else sys.stdin.read())
        if args.ids_only:
            print(" ".join(map(str, ids)))
        else:
            width = len(str(max(ids, default=0)))
            for i in ids:
                print(f"{i:>{width}}  {piece(tok.token_bytes(i))}")
    else:
        sys.stdout.buffer.write(tok.decode_bytes(_parse_ids(sys.stdin.read())))
        sys.stdout.flush()
    return 0


def piece(b: bytes) -> str:
    """A token's bytes, readable: a quoted string with escapes ('\\n'), or b'\\xe2\\x80' when they are not
    whole UTF-8 characters (a character split across tokens)."""
    try:
        return repr(b.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(b)


def _train(args: argparse.Namespace) -> int:
    from gpt3lab.data.sources import read_documents
    from gpt3lab.tokenizer import Tokenizer

    docs = read_documents(args.sources, args.encoding_errors, args.text_field)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = Tokenizer.train((d.text for d in docs), args.vocab_size)
    for w in caught:
        print(f"gpt3lab: warning: {w.message}", file=sys.stderr)
    print(f"{tok.save(args.out)}: {tok.name} ({tok.vocab_size} ids)")
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
