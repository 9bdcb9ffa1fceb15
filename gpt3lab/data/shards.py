"""Token shards: raw little-endian uint16/uint32 arrays (`{split}_{k:04d}.bin`, read as numpy memmaps)
described by one small JSON header per split (`{split}.json`).

Header fields: magic, version, split, tokenizer (name), vocab_size, dtype, num_tokens, num_bytes (UTF-8
bytes of the split's document text, separators excluded, for bits/byte), num_documents, sources,
and shards: [{file, num_tokens}]. A shard is written as `NAME.tmp` and renamed when complete, and the
header is written last (also via a temp file), so a split without one is unfinished and an interrupted
run never leaves a file under a shard's name that is shorter than the header says.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpt3lab.errors import DataError

MAGIC = "gpt3lab-shards"
VERSION = 1
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token arrays to `{split}_NNNN.bin` files of at most `shard_tokens` tokens each."""

    def __init__(self, out_dir: Path, split: str, vocab_size: int, shard_tokens: int = 2**30):
        self.out_dir, self.split, self.vocab_size = Path(out_dir), split, vocab_size
        self.dtype = dtype_for_vocab(vocab_size)
        if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
            raise DataError(f"shard_tokens={shard_tokens!r} must be a positive whole number")  # else: endless loop
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self._file = None

    def write(self, tokens) -> None:
        arr = np.asarray(tokens)
        if arr.dtype.kind not in "ui":
            arr = arr.astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise DataError(f"token id {int(arr.max())} does not fit vocab_size {self.vocab_size}")
        arr = arr.astype(self.dtype.newbyteorder("<"), copy=False)
        while arr.size:
            if self._file is None or self.shards[-1]["num_tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["num_tokens"]
            part, arr = arr[:room], arr[room:]
            self._file.write(part.tobytes())
            self.shards[-1]["num_tokens"] += int(part.size)

    def _open_next(self) -> None:
        self._finish()
        name = f"{self.split}_{len(self.shards):04d}.bin"
        self._file = open(self.out_dir / (name + ".tmp"), "wb")
        self.shards.append({"file": name, "num_tokens": 0})

    def _finish(self) -> None:
        """Close the current shard and give it its final name."""
        if self._file is not None:
            self._file.close()
            self._file = None
            path = self.out_dir / self.shards[-1]["file"]
            path.with_name(path.name + ".tmp").replace(path)

    def close(self, **fields) -> dict:
        """Finish the shards and write the header (with extra `fields`); returns the header."""
        self._finish()
        header = {"magic": MAGIC, "version": VERSION, "split": self.split, "vocab_size": self.vocab_size,
                  "dtype": self.dtype.name, "num_tokens": sum(s["num_tokens"] for s in self.shards),
                  **fields, "shards": self.shards}
        path = self.out_dir / f"{self.split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(header, indent=1), encoding="utf-8")
        tmp.replace(path)
        return header


def remove_split_files(out_dir: Path) -> None:
    """Delete every split's header, shards and unfinished shards in `out_dir` (nothing else)."""
    for split in SPLITS:  # headers first, so a half-cleaned directory never looks finished
        (out_dir / f"{split}.json").unlink(missing_ok=True)
    for split in SPLITS:
        for stale in [*out_dir.glob(f"{split}_*.bin"), *out_dir.glob(f"{split}_*.bin.tmp")]:
            stale.unlink(missing_ok=True)


def read_header(data_dir: str | Path, split: str) -> dict:
    """The validated header of `split` in `data_dir` (DataError naming the file and the fix)."""
    path = Path(data_dir) / f"{split}.json"
    if not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} does not exist; create it with `gpt3lab prepare ... --out {data_dir}`")
    if not path.is_file():
        raise DataError(f"{path} is missing; (re)run `gpt3lab prepare ... --out {data_dir}`")
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        h = None
    if not isinstance(h, dict) or h.get("magic") != MAGIC:
        raise DataError(f"{path} is not a gpt3lab shard header; re-run `gpt3lab prepare ... --out {data_dir}`")
    if h.get("version") != VERSION:
        raise DataError(f"{path} has shard format version {h.get('version')}, expected {VERSION}; "
                        f"re-run `gpt3lab prepare` with this gpt3lab")
    try:
        dtype = np.dtype(h["dtype"])
        if dtype != dtype_for_vocab(int(h["vocab_size"])):
            raise DataError(f"{path}: dtype {h['dtype']} does not match vocab_size {h['vocab_size']} "
                            f"(needs {dtype_for_vocab(int(h['vocab_size'])).name}); re-run `gpt3lab prepare`")
        if sum(int(s["num_tokens"]) for s in h["shards"]) != int(h["num_tokens"]):
            raise DataError(f"{path}: shard token counts do not add up to num_tokens; re-run `gpt3lab prepare`")
        int(h["num_bytes"]), str(h["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is missing or has a bad field ({e}); re-run `gpt3lab prepare`") from None
    return h


def open_shards(data_dir: str | Path, header: dict) -> list[np.memmap]:
    """Memmaps of the header's shard files, each checked to have exactly its stated size."""
    dtype = np.dtype(header["dtype"]).newbyteorder("<")
    arrays = []
    for s in header["shards"]:
        path = Path(data_dir) / s["file"]
        want = int(s["num_tokens"]) * dtype.itemsize
        have = path.stat().st_size if path.is_file() else None
        if have != want:
            what = "missing" if have is None else f"{have} bytes, header says {want}"
            raise DataError(f"shard {path} is {what} (truncated or stale); re-run `gpt3lab prepare`")
        if want:
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return arrays
