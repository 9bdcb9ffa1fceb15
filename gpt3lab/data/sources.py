"""Corpus sources -> a stream of documents, each a stream of text pieces (nothing is read whole).

A SOURCE is a text file (one document), a directory (every non-hidden file below it, recursively,
sorted), a glob, a JSONL file (`*.jsonl`: one document per line, from its `text` field), a Parquet
file (`*.parquet`: one document per row of the text column), a Hugging Face `datasets` dataset saved
with `save_to_disk` (a directory; read with `load_from_disk`, memory-mapped), or the word `shakespeare`
(the bundled corpus: 42 documents, one per work). Text and JSONL files may be compressed (`.gz`,
`.zst`); the format is the suffix before the compression suffix. Parquet, zstd and saved datasets need
the `formats` extra (`pip install 'gpt3lab[formats]'`).

A long document is yielded in pieces of ~`PIECE_CHARS` characters, cut only just before a space or
newline that follows a non-space character: no pre-token of GPT-2's regex spans such a point and no
special token contains one, so the pieces' tokens concatenate to the tokens of the whole text.

Damaged input is an error naming the file and what is wrong, never a traceback or a silent partial read:
a `.gz` that is not gzip, corrupt or truncated; a `.zst` that is corrupt or truncated (zstandard's stream
reader returns a truncated frame's bytes without complaint, so frames are decoded here and a frame
missing its end is refused); a saved dataset whose Arrow file cannot be read.

The output directory of `prepare` is never read as a source (`exclude`): `prepare SRC --out SRC/out` skips
SRC/out, and a SOURCE inside it is refused.

Encoding policy: files must be UTF-8. By default a bad byte is an error naming the file and the byte
offset (of the decompressed stream for compressed files); with encoding_errors="replace"
(`--encoding-errors replace`) bad bytes become U+FFFD. A UTF-8 byte-order mark at the start of a file
is dropped.
"""
from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt3lab.errors import DataError

ENCODING_ERRORS = ("strict", "replace")
PIECE_CHARS = 1 << 20  # long documents are cut into ~1 Mi-character pieces
BLOCK_BYTES = 1 << 20  # read size of text files
COMPRESSED = (".gz", ".zst")
ZSTD_FEED = 1 << 11  # compressed bytes per zstd decompression step
_CUT = re.compile(r"(?<=\S)[ \n]")  # a safe cut point: just before " " or "\n" that follows a non-space


@dataclass
class Document:
    name: str  # "path" or "path:line" for JSONL
    text: str


@dataclass
class DocStream:
    """A document whose text arrives as consecutive pieces (`pieces` can be iterated once)."""
    name: str
    pieces: Iterator[str]


def expand_sources(specs: list[str], exclude: Path | None = None) -> list[Path]:
    """Resolve SOURCE specs to a list of files or saved-dataset directories (order kept; sorted within).

    exclude: a directory (prepare's output) whose files are never sources; a SOURCE inside it is an error."""
    if not specs:
        raise DataError("no SOURCE given; pass text files, directories, globs, JSONL files or `shakespeare`")
    inside = _inside(exclude)
    files: list[Path] = []
    for spec in specs:
        spec = str(spec)
        if spec != "shakespeare" and inside(Path(spec)):
            raise DataError(f"source {spec!r} is inside the output directory {exclude}; prepare would read its "
                            f"own output as text: pass another --out")
        if spec == "shakespeare":
            from gpt3lab.data.shakespeare import shakespeare_files
            files += shakespeare_files()
        elif Path(spec).is_dir() and is_saved_dataset(Path(spec)):
            files.append(Path(spec))
        elif Path(spec).is_dir():
            files += sorted(p for p in Path(spec).rglob("*") if p.is_file() and not inside(p)
                            and not any(part.startswith(".") for part in p.relative_to(spec).parts))
        elif Path(spec).is_file():
            files.append(Path(spec))
        elif glob.has_magic(spec):
            matched = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matched:
                raise DataError(f"glob {spec!r} matches no files; check the pattern (quote it in the shell)")
            files += [p for p in matched if not inside(p)]
        else:
            raise DataError(f"source {spec!r} does not exist; pass an existing file, directory, glob, "
                            f"JSONL file or `shakespeare`")
    return files


def _inside(directory: Path | None):
    """A test: is a path `directory` itself or below it (symlinks resolved)?"""
    if directory is None:
        return lambda p: False
    root = Path(directory).resolve()
    return lambda p: p.resolve() == root or root in p.resolve().parents


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def need(module: str, what: str):
    """Import an optional package, or raise a DataError naming the extra that provides it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{what} needs the `{module.split('.')[0]}` package; "
                        f"install it with: pip install 'gpt3lab[formats]'") from None


def open_binary(path: Path):
    """A binary stream of the file's (decompressed) bytes; damage is a DataError naming the file."""
    suffix = path.suffix.lower()
    zstd = need("zstandard", f"reading {path}") if suffix == ".zst" else None
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path and permissions") from None
    if suffix == ".gz":
        return io.BufferedReader(_Checked(gzip.GzipFile(fileobj=raw, mode="rb"), raw, path))
    if suffix == ".zst":
        return io.BufferedReader(_Checked(_ZstdFrames(raw, zstd), raw, path))
    return raw


class _ZstdFrames:
    """The decompressed bytes of a .zst file, frame after frame; `readinto` raises EOFError when the file
    ends inside a frame. Input is fed ZSTD_FEED bytes at a time, which bounds one step's output (a 4-byte
    RLE block expands to 128 KiB: 2 KiB in gives at most 64 MiB out)."""

    def __init__(self, raw, zstd):
        self.raw, self.zstd = raw, zstd
        self.dobj, self.started = zstd.ZstdDecompressor().decompressobj(write_size=1 << 14), False
        self.out = memoryview(b"")      # decompressed bytes not yet returned
        self.pending = memoryview(b"")  # compressed bytes read but not yet fed

    def readinto(self, b) -> int:
        """Fill `b` (fewer bytes only at the end of the file); one copy per byte."""
        view, filled = memoryview(b).cast("B"), 0
        while filled < len(view):
            if not self.out:
                if not self.pending:
                    self.pending = memoryview(self.raw.read(BLOCK_BYTES))
                    if not self.pending:
                        if self.started:
                            raise EOFError("the file ends inside a zstd frame")
                        break
                self.out = memoryview(self._decompress(self.pending[:ZSTD_FEED]))
                self.pending = self.pending[ZSTD_FEED:]
                continue
            k = min(len(self.out), len(view) - filled)
            view[filled:filled + k] = self.out[:k]
            self.out, filled = self.out[k:], filled + k
        return filled

    def _decompress(self, data) -> bytes:
        parts = []
        while data:
            self.started = True
            parts.append(self.dobj.decompress(data))
            data = b""
            if self.dobj.eof:                       # a frame ended: what follows starts the next one
                data, self.started = self.dobj.unused_data, False
                self.dobj = self.zstd.ZstdDecompressor().decompressobj(write_size=1 << 14)
        return b"".join(parts)

    def close(self) -> None:
        self.raw.close()


class _Checked(io.RawIOBase):
    """A decompressing stream whose read errors become one DataError naming the file and what is wrong."""

    def __init__(self, inner, raw, path: Path):
        self.inner, self.raw, self.path = inner, raw, path

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            return self.inner.readinto(b)
        except EOFError:
            raise DataError(f"{self.path}: truncated (the compressed stream ends early); copy the file "
                            f"again") from None
        except Exception as e:         # gzip.BadGzipFile / zlib.error / zstd.ZstdError: not the format, or damaged
            what = "not gzip data" if str(e).startswith("Not a gzipped file") else "corrupt"
            raise DataError(f"{self.path}: {what} ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                            f"check the file or its suffix") from None

    def close(self) -> None:
        if not self.closed:
            self.inner.close()
            self.raw.close()
        super().close()


def format_of(path: Path) -> str:
    """"dataset" | "parquet" | "jsonl" | "text", from the suffix (before .gz/.zst)."""
    if path.is_dir():
        return "dataset"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    inner = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".parquet": "parquet"}.get(inner, "text")


def iter_documents(specs: list[str], errors: str = "strict", text_field: str = "text",
                   exclude: Path | None = None) -> Iterator[DocStream]:
    """Every document of every SOURCE (none under `exclude`), in order, streamed (empty documents included)."""
    if errors not in ENCODING_ERRORS:
        raise DataError(f"encoding errors policy {errors!r} is not one of {', '.join(ENCODING_ERRORS)}")
    readers = {"text": _text_docs, "jsonl": _jsonl_docs, "parquet": _parquet_docs, "dataset": _dataset_docs}
    for path in expand_sources(specs, exclude):
        yield from readers[format_of(path)](path, errors, text_field)


def read_documents(specs: list[str], errors: str = "strict", text_field: str = "text") -> list[Document]:
    """All non-empty documents of all SOURCEs, in memory (for small corpora: tokenizer training, eval)."""
    docs = [Document(d.name, "".join(d.pieces)) for d in iter_documents(specs, errors, text_field)]
    if not any(d.text for d in docs):
        raise DataError(f"the corpus is empty (no text) from {' '.join(map(str, specs))}; "
                        f"pass files that contain text")
    return [d for d in docs if d.text]


# ---- pieces ------------------------------------------------------------------------------------------

def chunk_text(text: str, size: int | None = None) -> list[str]:
    """Cut `text` into ~`size` pieces at safe cut points (their tokens concatenate to the text's)."""
    size = size or PIECE_CHARS
    pieces, start = [], 0
    while len(text) - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start:m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def last_cut(text: str, limit: int) -> int:
    """The last safe cut point at or before `limit`, preferring a line break; 0 if there is none."""
    nl = text.rfind("\n", 1, limit + 1)
    while nl > 0 and text[nl - 1].isspace():
        nl = text.rfind("\n", 1, nl)
    if nl > 0:
        return nl
    cuts = [m.start() for m in _CUT.finditer(text, 0, limit + 1)]
    return cuts[-1] if cuts else 0


def _pieces_of_blocks(blocks: Iterator[str]) -> Iterator[str]:
    """Re-cut a stream of text blocks into ~PIECE_CHARS pieces at safe cut points."""
    buf, size = "", PIECE_CHARS
    for block in blocks:
        buf += block
        while len(buf) > size:
            m = _CUT.search(buf, size)
            if m is None:
                break  # no safe point yet: keep reading (text without spaces or newlines)
            yield buf[:m.start()]
            buf = buf[m.start():]
    if buf:
        yield buf


def _decoded_blocks(stream, name: str, errors: str) -> Iterator[str]:
    """UTF-8 blocks of a binary stream; a bad byte raises a DataError naming the byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset, first = 0, True
    with stream:
        while True:
            data = stream.read(BLOCK_BYTES)
            if first and data.startswith(codecs.BOM_UTF8):
                data, offset = data[3:], 3
            first = False
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise DataError(_bad_utf8(name, offset - pending + e.start, e.object[e.start])) from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def _bad_utf8(name: str, offset: int, byte: int) -> str:
    return (f"{name}: invalid UTF-8 at byte offset {offset} (byte 0x{byte:02x}); "
            f"convert the file to UTF-8 or pass --encoding-errors replace")


# ---- readers -----------------------------------------------------------------------------------------

def _text_docs(path: Path, errors: str, text_field: str) -> Iterator[DocStream]:
    yield DocStream(str(path), _pieces_of_blocks(_decoded_blocks(open_binary(path), str(path), errors)))


def _jsonl_docs(path: Path, errors: str, text_field: str) -> Iterator[DocStream]:
    offset = 0
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            name = f"{path}:{lineno}"
            if raw.startswith(codecs.BOM_UTF8) and lineno == 1:
                raw, offset = raw[3:], 3
            try:
                line = raw.decode("utf-8", errors=errors).strip()
            except UnicodeDecodeError as e:
                raise DataError(_bad_utf8(str(path), offset + e.start, raw[e.start])) from None
            offset += len(raw)
            if line:
                yield DocStream(name, iter(chunk_text(_json_text(line, name, text_field))))


def _json_text(line: str, name: str, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}: not valid JSON ({e.msg}); fix the line or remove it") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise DataError(f"{name}: no string field {text_field!r}; each JSONL line must be "
                        f'an object like {{"{text_field}": "..."}} (or pass --text-field)')
    return record[text_field]


def _column_texts(name: str, batches, columns: list[str], text_field: str) -> Iterator[DocStream]:
    """Documents from record batches (dicts of column -> list), named NAME:ROW."""
    if text_field not in columns:
        raise DataError(f"{name} has no column {text_field!r} (columns: {', '.join(columns)}); "
                        f"pass --text-field")
    row = 0
    for batch in batches:
        for text in batch[text_field]:
            if not isinstance(text, str):
                raise DataError(f"{name}:{row}: {text_field!r} is {type(text).__name__}, not text; "
                                f"pass --text-field naming a string column")
            yield DocStream(f"{name}:{row}", iter(chunk_text(text)))
            row += 1


def _parquet_docs(path: Path, errors: str, text_field: str) -> Iterator[DocStream]:
    pq = need("pyarrow.parquet", f"reading {path}")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
        raise DataError(f"{path} is not a readable Parquet file ({e}); check the file") from None
    columns = pf.schema_arrow.names
    batches = (b.to_pydict() for b in pf.iter_batches(batch_size=256, columns=[text_field])) \
        if text_field in columns else iter(())
    yield from _column_texts(str(path), batches, columns, text_field)


def _dataset_docs(path: Path, errors: str, text_field: str) -> Iterator[DocStream]:
    datasets = need("datasets", f"reading the saved dataset {path}")
    try:
        ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow files: rows are read as iterated
    except Exception as e:       # pyarrow's ArrowInvalid / OSError, datasets' own errors: they name no file
        raise _broken_dataset(path, e) from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{path} holds several splits ({', '.join(ds)}); pass one of them, "
                        f"e.g. {path / next(iter(ds))}")
    batches = ds.select_columns([text_field]).iter(batch_size=256) if text_field in ds.column_names else iter(())
    yield from _column_texts(str(path), _guarded(batches, path), ds.column_names, text_field)


def _guarded(batches, path: Path):
    try:
        yield from batches
    except Exception as e:
        raise _broken_dataset(path, e) from None


def _broken_dataset(path: Path, e: Exception) -> DataError:
    """The error for a saved dataset that cannot be read, naming its first unreadable Arrow file."""
    import pyarrow as pa

    for f in sorted(path.rglob("*.arrow")):
        try:
            with pa.memory_map(str(f)) as src:
                pa.ipc.open_stream(src).read_all()
        except Exception as bad:
            return DataError(f"{f}: unreadable Arrow file ({' '.join(str(bad).split())[:120]}); the saved dataset "
                             f"{path} is damaged: save it again with save_to_disk")
    return DataError(f"{path}: cannot read the saved dataset ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                     f"save it again with save_to_disk")
