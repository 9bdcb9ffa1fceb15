"""Corpus sources -> documents.

A SOURCE is a text file (one document), a directory (every non-hidden file below it, recursively,
sorted), a glob, a JSONL file (`*.jsonl`: one document per line, from its `text` field), or the word
`shakespeare` (the bundled corpus: 42 documents, one per work).

Encoding policy: files must be UTF-8. By default a bad byte is an error naming the file and the byte
offset; with encoding_errors="replace" (`--encoding-errors replace`) bad bytes become U+FFFD.
A UTF-8 byte-order mark at the start of a file is dropped.
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

from gpt3lab.errors import DataError

ENCODING_ERRORS = ("strict", "replace")


@dataclass
class Document:
    name: str  # "path" or "path:line" for JSONL
    text: str


def expand_sources(specs: list[str]) -> list[Path]:
    """Resolve SOURCE specs to a list of files (order kept; directories and globs sorted)."""
    if not specs:
        raise DataError("no SOURCE given; pass text files, directories, globs, JSONL files or `shakespeare`")
    files: list[Path] = []
    for spec in specs:
        spec = str(spec)
        if spec == "shakespeare":
            from gpt3lab.data.shakespeare import shakespeare_files
            files += shakespeare_files()
        elif Path(spec).is_dir():
            files += sorted(p for p in Path(spec).rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(spec).parts))
        elif Path(spec).is_file():
            files.append(Path(spec))
        elif glob.has_magic(spec):
            matched = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matched:
                raise DataError(f"glob {spec!r} matches no files; check the pattern (quote it in the shell)")
            files += matched
        else:
            raise DataError(f"source {spec!r} does not exist; pass an existing file, directory, glob, "
                            f"JSONL file or `shakespeare`")
    return files


def decode_utf8(data: bytes, name: str, errors: str = "strict") -> str:
    """UTF-8 bytes -> str under the stated policy; a bad byte names file and offset."""
    if errors not in ENCODING_ERRORS:
        raise DataError(f"encoding errors policy {errors!r} is not one of {', '.join(ENCODING_ERRORS)}")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: invalid UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}); "
                        f"convert the file to UTF-8 or pass --encoding-errors replace") from None


def read_file_documents(path: Path, errors: str = "strict", text_field: str = "text") -> list[Document]:
    """One document per text file; one per line of a .jsonl file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path and permissions") from None
    if path.suffix.lower() != ".jsonl":
        return [Document(str(path), decode_utf8(data, str(path), errors))]
    docs = []
    offset = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        line_name = f"{path}:{lineno}"
        try:
            line = decode_utf8(raw, line_name, errors).strip()
        except DataError:
            raise DataError(_offset_message(raw, path, offset, errors)) from None
        offset += len(raw) + 1
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{line_name}: not valid JSON ({e.msg}); fix the line or remove it") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise DataError(f"{line_name}: no string field {text_field!r}; each JSONL line must be "
                            f'an object like {{"{text_field}": "..."}} (or pass --text-field)')
        docs.append(Document(line_name, record[text_field]))
    return docs


def _offset_message(raw: bytes, path: Path, line_start: int, errors: str) -> str:
    try:
        raw.decode("utf-8")
        bad = 0
    except UnicodeDecodeError as e:
        bad = e.start
    return (f"{path}: invalid UTF-8 at byte offset {line_start + bad}; "
            f"convert the file to UTF-8 or pass --encoding-errors replace")


def read_documents(specs: list[str], errors: str = "strict", text_field: str = "text") -> list[Document]:
    """All documents of all SOURCEs, in order; raises DataError if there is no text at all."""
    files = expand_sources(specs)
    docs = [d for f in files for d in read_file_documents(f, errors, text_field)]
    if not any(d.text for d in docs):
        raise DataError(f"the corpus is empty ({len(files)} file(s), no text) from {' '.join(map(str, specs))}; "
                        f"pass files that contain text")
    return [d for d in docs if d.text]
