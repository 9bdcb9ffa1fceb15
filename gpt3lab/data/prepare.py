"""`gpt3lab prepare SOURCE... --out DATA_DIR [--workers N]`: corpus -> tokenizer + train/val token shards.

Streaming: documents are read as streams (gpt3lab.data.sources), each is given a split by its index
(gpt3lab.data.split), its pieces are grouped into ~1 MiB jobs per split, tokenized by N worker
processes (gpt3lab.data.workers) and appended to that split's shards as results arrive, in order.
Memory is bounded by the job size and N, never by the corpus; the tokens are the same for any N.
Within a split, documents are joined by <|endoftext|> (a literal "<|endoftext|>" in a document is the
special token too). A corpus of a single plain text file is split at a line break instead.

The output directory is marked by `prepare.json` (written first with complete=false, last with the
summary): `prepare` replaces only a directory it wrote, or an empty one, unless overwrite=True. Shards
are renamed into place when complete and headers are written last, so an interrupted run leaves
nothing `train` would read; rerunning starts over. The data dir also stores the tokenizer
(`gpt3lab_tokenizer.json`) so training can copy it. The output directory is never read as a source:
`prepare SRC --out SRC/out` skips SRC/out (and a SOURCE inside DATA_DIR is refused before anything is
written).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

from tqdm import tqdm

from gpt3lab.argtypes import float_range, int_range, positive_int, seed_int
from gpt3lab.data.shards import SPLITS, ShardWriter, dtype_for_vocab, read_header, remove_split_files
from gpt3lab.data.sources import (COMPRESSED, ENCODING_ERRORS, DocStream, expand_sources, format_of,
                                  iter_documents, last_cut)
from gpt3lab.data.split import check_fraction, is_val
from gpt3lab.data.workers import encode_ordered
from gpt3lab.errors import DataError
from gpt3lab.tokenizer import EOT, TOKENIZER_FILE, Tokenizer, VocabWarning, load_tokenizer

JOB_CHARS = 1 << 20  # text per tokenizer job
MARKER = "prepare.json"
MARKER_MAGIC = "gpt3lab-prepare"
MAX_SHARD_TOKENS = 2**40


class SplitWarning(UserWarning):
    """The val split is empty or holds much more of the text than asked."""


# ---- output directory -------------------------------------------------------------------------------

def _written_by_prepare(out: Path) -> bool:
    try:
        m = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    # older gpt3lab wrote only the summary (out, tokenizer, ...) at the end
    return isinstance(m, dict) and (m.get("magic") == MARKER_MAGIC or {"out", "tokenizer"} <= m.keys())


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing, non-empty directory that `prepare` did not write (unless `overwrite`)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite and not _written_by_prepare(out):
        raise DataError(f"--out {out} is not empty and was not written by `gpt3lab prepare` (no {MARKER}); "
                        f"pass a new directory, or --overwrite to replace its train_*/val_* files")


def _write_marker(out: Path, fields: dict) -> None:
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"magic": MARKER_MAGIC, **fields}, indent=1), encoding="utf-8")
    tmp.replace(out / MARKER)


def reset_output(out: Path, sources: list[str]) -> None:
    """Create `out`, mark it as ours (incomplete) and remove the previous run's splits."""
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, {"complete": False, "sources": sources})
    remove_split_files(out)


# ---- documents -> (split, document) ------------------------------------------------------------------

def _nonempty(docs: Iterator[DocStream]) -> Iterator[DocStream]:
    for d in docs:
        first = next((p for p in d.pieces if p), None)
        if first is not None:
            yield DocStream(d.name, chain([first], d.pieces))


def labelled_documents(sources: list[str], errors: str, text_field: str, val_fraction: float,
                       seed: int, exclude: Path | None = None) -> Iterator[tuple[str, DocStream]]:
    """(split, document) for every non-empty document (none under `exclude`), in corpus order."""
    files = expand_sources(sources, exclude)
    docs = _nonempty(iter_documents(sources, errors, text_field, exclude))
    if val_fraction > 0 and len(files) == 1 and format_of(files[0]) == "text" \
            and files[0].suffix.lower() not in COMPRESSED:
        doc = next(docs, None)
        if doc is not None:
            yield from _split_one(doc, files[0].stat().st_size, val_fraction)
        return
    for i, d in enumerate(docs):
        yield ("val" if is_val(i, val_fraction, seed) else "train"), d


def _split_one(doc: DocStream, nbytes: int, val_fraction: float) -> Iterator[tuple[str, DocStream]]:
    """A single-document corpus: train gets the text up to a line break near (1 - f) of its bytes."""
    rest: list = []

    def head() -> Iterator[str]:
        seen, target = 0, (1 - val_fraction) * nbytes
        for p in doc.pieces:
            size = len(p.encode("utf-8", "surrogatepass"))
            if seen + size <= target:
                seen += size
                yield p
                continue
            cut = last_cut(p, int(len(p) * (target - seen) / size))
            yield p[:cut]
            rest.append(chain([p[cut:]], doc.pieces))
            return

    def tail() -> Iterator[str]:
        yield from (p for p in chain(*rest) if p)

    yield "train", DocStream(doc.name, head())
    yield "val", DocStream(doc.name + " (tail)", tail())


# ---- (split, document) -> shards ---------------------------------------------------------------------

def _jobs(labelled: Iterator[tuple[str, DocStream]], stats: dict) -> Iterator[tuple[tuple, list[str]]]:
    """((split, separators, document name), texts) jobs of ~JOB_CHARS (the name: the job's first document);
    counts documents into `stats`."""
    bufs = {s: ([], [0, 0]) for s in SPLITS}  # split -> (texts, [chars, separators])
    names = {}                                # split -> the document the job being filled starts in
    for split, doc in labelled:
        texts, n = bufs[split]
        st = stats[split]
        first = True
        for piece in doc.pieces:
            if not texts:
                names[split] = doc.name
            if first and st["documents"]:
                texts.append(EOT)  # document separator
                n[1] += 1
            if first:
                st["documents"] += 1
                if len(st["names"]) < 10000:
                    st["names"].append(doc.name)
                first = False
            texts.append(piece)
            n[0] += len(piece)
            if n[0] >= JOB_CHARS:
                yield (split, n[1], names[split]), texts[:]
                texts.clear()
                n[:] = [0, 0]
    for split, (texts, n) in bufs.items():
        if texts:
            yield (split, n[1], names[split]), texts


def write_splits(tok: Tokenizer, labelled, out: Path, sources: list[str], shard_tokens: int,
                 workers: int, bar: tqdm) -> dict:
    """Tokenize the labelled documents into both splits' shards; returns {split: header}."""
    writers = {s: ShardWriter(out, s, tok.vocab_size, shard_tokens) for s in SPLITS}
    stats = {s: {"documents": 0, "names": [], "bytes": 0} for s in SPLITS}
    t0, tokens, shown = time.perf_counter(), 0, 0.0
    dtype = dtype_for_vocab(tok.vocab_size)
    jobs = _jobs(labelled, stats)
    for (split, separators, _), (ids, nbytes) in encode_ordered(jobs, tok, dtype, workers, out,
                                                                describe=lambda job: f"{job[2]} ({job[0]})"):
        writers[split].write(ids)
        stats[split]["bytes"] += nbytes - len(EOT) * separators  # the documents' own bytes (EOT is ASCII)
        tokens += len(ids)
        bar.update(nbytes)
        now = time.perf_counter()
        if now - shown > 0.5:
            bar.set_postfix_str(f"{tokens / max(now - t0, 1e-9) / 1e3:,.0f}k tok/s", refresh=False)
            shown = now
    if not stats["train"]["documents"] + stats["val"]["documents"]:
        raise DataError(f"the corpus is empty (no text) from {' '.join(sources)}; pass files that contain text")
    # train's header last: a directory with train.json is finished
    return {s: writers[s].close(tokenizer=tok.name, num_bytes=stats[s]["bytes"],
                                num_documents=stats[s]["documents"], sources=sources,
                                documents=stats[s]["names"]) for s in ("val", "train")}


# ---- prepare -----------------------------------------------------------------------------------------

def resolve_tokenizer(spec: str, train_texts) -> Tokenizer:
    """"gpt2" | saved tokenizer path | "bpe:N" (trained on `train_texts()`, an iterable of texts)."""
    spec = str(spec)
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise DataError(f"--tokenizer {spec!r}: expected bpe:VOCAB_SIZE, e.g. bpe:4096") from None
        return Tokenizer.train(train_texts(), n)
    return load_tokenizer(spec)


def check_options(shard_tokens: int, workers: int, val_fraction: float) -> None:
    """The API's own checks (the CLI's argparse types say the same): no value can start a runaway."""
    for name, value, hi in (("shard_tokens", shard_tokens, MAX_SHARD_TOKENS), ("workers", workers, 1024)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
            raise DataError(f"{name}={value!r} must be a whole number in [1, {hi}], "
                            f"e.g. --{name.replace('_', '-')} {2**30 if name == 'shard_tokens' else 2}")
    check_fraction(val_fraction)


def prepare(sources: list[str], out_dir: str | Path, tokenizer: str | Tokenizer = "gpt2",
            val_fraction: float = 0.1, seed: int = 0, encoding_errors: str = "strict",
            text_field: str = "text", shard_tokens: int = 2**30, progress: bool = True,
            workers: int = 1, overwrite: bool = False) -> dict:
    """Tokenize `sources` into `out_dir` (train/val shards + tokenizer); returns a summary dict."""
    t0 = time.perf_counter()
    check_options(shard_tokens, workers, val_fraction)
    out, names = Path(out_dir), [str(s) for s in sources]
    check_output(out, overwrite)
    expand_sources(names, out)       # a SOURCE inside --out is refused before anything there is touched

    def labelled():
        return labelled_documents(names, encoding_errors, text_field, val_fraction, seed, exclude=out)

    tok = tokenizer if isinstance(tokenizer, Tokenizer) else resolve_tokenizer(
        tokenizer, lambda: (p for s, d in labelled() if s == "train" for p in d.pieces))
    reset_output(out, names)
    tok.save(out)
    with tqdm(total=_total_bytes(names, out), unit="B", unit_scale=True, desc="tokenizing", disable=not progress,
              file=sys.stderr) as bar:
        headers = write_splits(tok, labelled(), out, names, shard_tokens, workers, bar)
    seconds = time.perf_counter() - t0
    total = headers["train"]["num_bytes"] + headers["val"]["num_bytes"]
    summary = {"out": str(out), "tokenizer": tok.name, "vocab_size": tok.vocab_size,
               "dtype": headers["train"]["dtype"], "documents": sum(h["num_documents"] for h in headers.values()),
               "bytes": total, "workers": workers, "seconds": round(seconds, 3),
               "tokenize_MBps": round(total / 1e6 / max(seconds, 1e-9), 2),
               **{f"{s}_{k}": headers[s][f"num_{k}"] for s in SPLITS for k in ("tokens", "bytes", "documents")}}
    _warn_split(summary, val_fraction)
    _write_marker(out, {"complete": True, **summary})
    return summary


def _total_bytes(sources: list[str], out: Path) -> int | None:
    """Bytes to read, for the progress bar (None when compressed or columnar sources make it unknown)."""
    files = expand_sources(sources, out)
    if any(format_of(f) in ("parquet", "dataset") or f.suffix.lower() in COMPRESSED for f in files):
        return None
    return sum(f.stat().st_size for f in files)


def _warn_split(s: dict, val_fraction: float) -> None:
    if val_fraction <= 0:
        return
    share = s["val_bytes"] / s["bytes"]
    if s["val_documents"] == 0:
        warnings.warn(f"val is empty: {s['documents']} document(s) are too few for val fraction "
                      f"{val_fraction:g} (one document in every {1 / val_fraction:.3g} goes to val); "
                      f"pass more documents or a larger --val-fraction", SplitWarning, stacklevel=3)
    elif share > 1.5 * val_fraction:
        warnings.warn(f"val holds {share:.1%} of the text, more than the {val_fraction:.1%} asked "
                      f"({s['val_documents']} of {s['documents']} documents, of unequal sizes); pass more "
                      f"documents or a smaller --val-fraction", SplitWarning, stacklevel=3)


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
    p.epilog = ("SOURCE formats: text files (one document each), JSONL (one document per line, --text-field), "
                "either compressed as .gz or .zst; Parquet files (one document per row of --text-field); a "
                "Hugging Face dataset saved with save_to_disk (a directory); directories and globs of these. "
                ".zst, Parquet and saved datasets need: pip install 'gpt3lab[formats]'")
    p.add_argument("--workers", type=int_range(1, 1024), default=1,
                   help="tokenizer processes (the tokens are the same for any number)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the train/val files of an --out directory that prepare did not write")


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SplitWarning)
        warnings.simplefilter("always", VocabWarning)
        s = prepare(args.sources, args.out, args.tokenizer, args.val_fraction, args.seed, args.encoding_errors,
                    args.text_field, args.shard_tokens, progress=not args.no_progress, workers=args.workers,
                    overwrite=args.overwrite)
    for w in caught:
        print(f"gpt3lab: warning: {w.message}", file=sys.stderr)
    print(f"{s['out']}: {s['documents']} documents, {s['bytes'] / 1e6:.2f} MB -> train {s['train_tokens']:,} "
          f"tokens ({s['train_documents']} docs), val {s['val_tokens']:,} tokens ({s['val_documents']} docs); "
          f"tokenizer {s['tokenizer']} ({s['dtype']}), {s['workers']} worker(s), {s['tokenize_MBps']} MB/s")
    return 0
