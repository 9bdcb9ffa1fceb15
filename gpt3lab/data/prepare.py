"""`gpt3lab prepare SOURCE... --out DATA_DIR`: corpus -> tokenizer + train/val token shards.

Documents are split deterministically (a seeded shuffle of whole documents; the bundled Shakespeare
therefore holds out whole plays), each split's documents are joined with <|endoftext|> and tokenized
(a literal "<|endoftext|>" in a document is the special token too), and written as shards
(see gpt3lab.data.shards). A corpus of a single document is split at a line break instead.
The data dir also stores the tokenizer (`gpt3lab_tokenizer.json`) so training can copy it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from tqdm import tqdm

from gpt3lab.argtypes import float_range, positive_int, seed_int
from gpt3lab.data.shards import ShardWriter, read_header
from gpt3lab.data.sources import ENCODING_ERRORS, Document, read_documents
from gpt3lab.errors import DataError
from gpt3lab.tokenizer import EOT, TOKENIZER_FILE, Tokenizer, load_tokenizer

CHUNK_CHARS = 1 << 20  # long documents are encoded in ~1 MiB pieces (threads + progress)


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val): whole documents, chosen by a seeded shuffle until val holds >= val_fraction of the
    bytes; train keeps the original order. One document: split at a line break near the fraction."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} must be in [0, 1)")
    if val_fraction == 0.0:
        return docs, []
    if len(docs) == 1:
        return _split_one(docs[0], val_fraction)
    sizes = [len(d.text.encode("utf-8")) for d in docs]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val, held, target = set(), 0, val_fraction * sum(sizes)
    for i in order[:-1]:  # never hold out everything
        if held >= target:
            break
        val.add(i)
        held += sizes[i]
    return [d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val]


def _split_one(doc: Document, val_fraction: float) -> tuple[list, list]:
    cut = int(len(doc.text) * (1 - val_fraction))
    nl = doc.text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    return [Document(doc.name, doc.text[:cut])], [Document(doc.name + " (tail)", doc.text[cut:])]


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut `text` into ~`size` pieces whose tokens concatenate to the tokens of `text`: cut only just
    before a "\\n" preceded by a non-space character (no pre-token of GPT-2's regex spans such a point)."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and text[cut - 1].isspace():
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _write_split(tok: Tokenizer, docs: list[Document], out: Path, split: str, sources: list[str],
                 shard_tokens: int, bar: tqdm) -> dict:
    writer = ShardWriter(out, split, tok.vocab_size, shard_tokens)
    pieces: list[str] = []
    for i, d in enumerate(docs):
        if i:
            pieces.append(EOT)  # document separator
        pieces += chunk_text(d.text)
    n_bytes = 0  # bytes of the pieces, separators included
    for j in range(0, len(pieces), 16):
        group = pieces[j:j + 16]
        for ids in tok.encode_batch(group):
            writer.write(ids)
        group_bytes = sum(len(p.encode("utf-8")) for p in group)
        n_bytes += group_bytes
        bar.update(group_bytes)
    n_bytes -= len(EOT) * max(len(docs) - 1, 0)  # the documents' own bytes (EOT is ASCII)
    return writer.close(tokenizer=tok.name, num_bytes=n_bytes, num_documents=len(docs),
                        sources=sources, documents=[d.name for d in docs][:10000])


def resolve_tokenizer(spec: str, train_docs: list[Document]) -> Tokenizer:
    """"gpt2" | saved tokenizer path | "bpe:N" (trained on the train split's documents)."""
    spec = str(spec)
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise DataError(f"--tokenizer {spec!r}: expected bpe:VOCAB_SIZE, e.g. bpe:4096") from None
        return Tokenizer.train((d.text for d in train_docs), n)
    return load_tokenizer(spec)


def prepare(sources: list[str], out_dir: str | Path, tokenizer: str | Tokenizer = "gpt2",
            val_fraction: float = 0.1, seed: int = 0, encoding_errors: str = "strict",
            text_field: str = "text", shard_tokens: int = 2**30, progress: bool = True) -> dict:
    """Tokenize `sources` into `out_dir` (train/val shards + tokenizer); returns a summary dict."""
    t0 = time.perf_counter()
    docs = read_documents([str(s) for s in sources], encoding_errors, text_field)
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else resolve_tokenizer(tokenizer, train_docs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):  # headers go first, so a failed run never looks finished
        for stale in [out / f"{split}.json", *sorted(out.glob(f"{split}_*.bin"))]:
            stale.unlink(missing_ok=True)  # old shards too: a smaller corpus writes fewer
    tok.save(out)
    total = sum(len(d.text.encode("utf-8")) for d in docs)
    names = [str(s) for s in sources]
    t1 = time.perf_counter()
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress,
              file=sys.stderr) as bar:
        headers = {s: _write_split(tok, d, out, s, names, shard_tokens, bar)
                   for s, d in (("train", train_docs), ("val", val_docs))}
    seconds = time.perf_counter() - t1
    summary = {"out": str(out), "tokenizer": tok.name, "vocab_size": tok.vocab_size,
               "dtype": headers["train"]["dtype"], "documents": len(docs), "bytes": total,
               "seconds": round(time.perf_counter() - t0, 3), "tokenize_MBps": round(total / 1e6 / max(seconds, 1e-9), 2),
               **{f"{s}_{k}": headers[s][f"num_{k}"] for s in headers for k in ("tokens", "bytes", "documents")}}
    (out / "prepare.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def load_data_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The tokenizer a data dir was prepared with (checked against its shard headers)."""
    data_dir = Path(data_dir)
    if not (data_dir / TOKENIZER_FILE).is_file():
        raise DataError(f"{data_dir} has no {TOKENIZER_FILE}; (re)run `gpt3lab prepare ... --out {data_dir}`")
    tok = Tokenizer.load(data_dir)
    header = read_header(data_dir, "train")
    if header["tokenizer"] != tok.name or int(header["vocab_size"]) != tok.vocab_size:
        raise DataError(f"{data_dir}/train.json was made with tokenizer {header['tokenizer']} "
                        f"(vocab {header['vocab_size']}) but {data_dir}/{TOKENIZER_FILE} is {tok.name} "
                        f"(vocab {tok.vocab_size}); re-run `gpt3lab prepare`")
    return tok


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="text file, directory, glob, JSONL file (text field), or `shakespeare`")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="output data directory")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 | PATH to a saved tokenizer | bpe:VOCAB_SIZE")
    p.add_argument("--val-fraction", type=float_range(0.0, 1.0, hi_open=True), default=0.1, help="share of bytes held out (whole documents)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the document split")
    p.add_argument("--encoding-errors", choices=ENCODING_ERRORS, default="strict",
                   help="non-UTF-8 bytes: strict = error naming file and offset; replace = U+FFFD")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--shard-tokens", type=positive_int, default=2**30, help="max tokens per shard file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    s = prepare(args.sources, args.out, args.tokenizer, args.val_fraction, args.seed,
                args.encoding_errors, args.text_field, args.shard_tokens, progress=not args.no_progress)
    print(f"{s['out']}: {s['documents']} documents, {s['bytes'] / 1e6:.2f} MB -> train {s['train_tokens']:,} "
          f"tokens ({s['train_documents']} docs), val {s['val_tokens']:,} tokens ({s['val_documents']} docs); "
          f"tokenizer {s['tokenizer']} ({s['dtype']}), {s['tokenize_MBps']} MB/s")
    return 0
