"""`gpt3lab compress`: a language model is a compressor — its next-token probabilities drive a range coder.

    gpt3lab compress CHECKPOINT IN OUT          # IN (any bytes) -> OUT (.g3lz)
    gpt3lab compress -d CHECKPOINT IN OUT       # back, verified against the original's SHA-256

Input: the bytes are read as UTF-8 and tokenized; bytes that are not valid UTF-8 are escaped losslessly
as the tokenizer's single-byte tokens (every byte-level BPE has all 256), so any file round-trips;
text is merely what the model predicts well. A sequence longer than the context slides (model.py).

File format (little-endian):
    magic "G3LZ" | version u8 | total_bits u8 | threads u16 | checkpoint fingerprint 16B |
    token count u64 | original byte length u64 | SHA-256 of the original 32B | payload length u64 |
    quantize mode u8 (index in gpt3lab.model.quant.MODES: the model's weights must match) |
    torch version (u8 length + ASCII) | machine (u8 length + ASCII) | payload | CRC32 of all before u32
Decoding needs the same checkpoint (fingerprint checked up front), and the same torch version and
machine type (recorded; a mismatch that changes any probability shows up as a SHA-256 failure).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt3lab.compress.coder import RangeDecoder, RangeEncoder
from gpt3lab.compress.model import (TOTAL, TOTAL_BITS, Predictor, find_symbol, fingerprint, fixed_threads,
                                    quantise, symbol_range)
from gpt3lab.argtypes import add_quantize_argument
from gpt3lab.errors import CheckpointError, ConfigError, DataError
from gpt3lab.model.quant import MODES, mode_of

MAGIC = b"G3LZ"
VERSION = 2                                   # 2: the quantize mode byte (#12)
_HEAD = struct.Struct("<4sBBH16sQQ32sQB")
_ESCAPED = re.compile("([\udc80-\udcff]+)")   # surrogateescape's stand-ins for non-UTF-8 bytes


@dataclass
class Stats:
    """What one compression did: sizes, the model's own -log2 p total, and time."""

    n_bytes: int
    n_tokens: int
    file_bytes: int
    payload_bytes: int
    ideal_bits: float      # sum over tokens of -log2 p(token) under the fp32 softmax (cross-entropy)
    seconds: float

    @property
    def bits_per_byte(self) -> float:
        return 8 * self.file_bytes / max(self.n_bytes, 1)

    @property
    def ideal_bits_per_byte(self) -> float:
        return self.ideal_bits / max(self.n_bytes, 1)


def to_tokens(tokenizer, data: bytes) -> list[int]:
    """Token ids whose `decode_bytes` is exactly `data` (non-UTF-8 bytes -> single-byte tokens)."""
    ids: list[int] = []
    for i, part in enumerate(_ESCAPED.split(data.decode("utf-8", "surrogateescape"))):
        if i % 2 == 0:
            ids += tokenizer.encode(part) if part else []
            continue
        for c in part:
            b = bytes([ord(c) - 0xDC00])
            if b not in tokenizer.ranks:
                raise DataError(f"input holds the non-UTF-8 byte 0x{b[0]:02x} and tokenizer "
                                f"{tokenizer.name!r} has no single-byte token for it; convert the file to UTF-8")
            ids.append(tokenizer.ranks[b])
    return ids


def _progress(n: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=n, disable=not enabled, unit="tok", desc=desc, leave=False)


def encode_tokens(model, ids: list[int], start_id: int, progress: bool = False) -> tuple[bytes, float]:
    """Range-code `ids` under the model -> (payload, ideal bits = sum of -log2 p)."""
    enc, pred, ideal = RangeEncoder(), Predictor(model, start_id), 0.0
    logits = pred.first() if ids else None
    with _progress(len(ids), progress, "compress") as bar:
        for i, t in enumerate(ids):
            enc.encode(*symbol_range(quantise(logits), t), TOTAL)
            ideal -= float(torch.log_softmax(logits.float(), dim=-1)[t]) / math.log(2)
            if i + 1 < len(ids):
                logits = pred.feed(t)
            bar.update()
    return enc.finish(), ideal


def decode_tokens(model, payload: bytes, n_tokens: int, start_id: int, progress: bool = False) -> list[int]:
    """Inverse of encode_tokens: `n_tokens` ids from the payload under the same model."""
    dec, pred, ids = RangeDecoder(payload), Predictor(model, start_id), []
    logits = pred.first() if n_tokens else None
    with _progress(n_tokens, progress, "decompress") as bar:
        for i in range(n_tokens):
            cum = quantise(logits)
            t = find_symbol(cum, dec.target(TOTAL))
            dec.consume(*symbol_range(cum, t))
            ids.append(t)
            if i + 1 < n_tokens:
                logits = pred.feed(t)
            bar.update()
    return ids


def _short(s: str) -> bytes:
    return bytes([len(s.encode()[:255])]) + s.encode()[:255]


def compress_bytes(model, tokenizer, data: bytes, *, threads: int = 1,
                   progress: bool = False) -> tuple[bytes, Stats]:
    """Compress `data` with (model, tokenizer) on CPU with `threads` threads -> (file bytes, Stats)."""
    t0 = time.perf_counter()
    model.eval()
    ids = to_tokens(tokenizer, data)
    if tokenizer.decode_bytes(ids) != data:   # cannot happen for a byte-level BPE; never write a bad file
        raise DataError(f"tokenizer {tokenizer.name!r} does not reproduce the input exactly; cannot compress it")
    with fixed_threads(threads):
        payload, ideal = encode_tokens(model, ids, tokenizer.eot_id, progress)
    head = _HEAD.pack(MAGIC, VERSION, TOTAL_BITS, threads, fingerprint(model, tokenizer), len(ids), len(data),
                      hashlib.sha256(data).digest(), len(payload), MODES.index(mode_of(model)))
    body = head + _short(torch.__version__) + _short(platform.machine()) + payload
    blob = body + struct.pack("<I", zlib.crc32(body))
    return blob, Stats(len(data), len(ids), len(blob), len(payload), ideal, time.perf_counter() - t0)


def read_header(blob: bytes, name: str = "<data>") -> dict:
    """Parse and check a compressed file's framing (magic, version, length, CRC32). DataError if bad."""
    if len(blob) < _HEAD.size + 6 or blob[:4] != MAGIC:
        raise DataError(f"{name}: not a gpt3lab compressed file (no {MAGIC.decode()} header); "
                        f"it must be written by `gpt3lab compress`")
    magic, version, total_bits, threads, fp, n_tok, n_bytes, sha, n_payload, mode = _HEAD.unpack_from(blob)
    if version != VERSION or total_bits != TOTAL_BITS:
        raise DataError(f"{name}: compressed-file version {version} (total 2^{total_bits}); this gpt3lab "
                        f"reads version {VERSION} (2^{TOTAL_BITS}); use the gpt3lab that wrote it")
    pos = _HEAD.size
    strings = []
    for _ in range(2):
        n = blob[pos]
        strings.append(blob[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    expected = pos + n_payload + 4
    if len(blob) != expected:
        raise DataError(f"{name}: {len(blob):,} bytes but its header says {expected:,}; the file is truncated "
                        f"or has extra bytes (copy it again)")
    if zlib.crc32(blob[:-4]) != struct.unpack("<I", blob[-4:])[0]:
        raise DataError(f"{name}: corrupt (CRC32 mismatch); the file was damaged, copy it again")
    if mode >= len(MODES):
        raise DataError(f"{name}: unknown quantize mode {mode} in the header; use the gpt3lab that wrote it")
    return dict(quantize=MODES[mode], threads=threads, fingerprint=fp, n_tokens=n_tok, n_bytes=n_bytes, sha256=sha,
                torch=strings[0], machine=strings[1], payload=blob[pos:pos + n_payload])


def decompress_bytes(model, tokenizer, blob: bytes, *, name: str = "<data>", checkpoint: str = "the checkpoint",
                     progress: bool = False) -> bytes:
    """Inverse of compress_bytes. DataError (bad file) or CheckpointError (wrong model); never garbage."""
    h = read_header(blob, name)
    check_quantize(h, mode_of(model), name)
    if h["fingerprint"] != fingerprint(model, tokenizer):
        raise CheckpointError(f"{name} was compressed with a different model than {checkpoint} (fingerprint "
                              f"{h['fingerprint'].hex()}, this one {fingerprint(model, tokenizer).hex()}); "
                              f"decompress with the checkpoint that compressed it")
    model.eval()
    with fixed_threads(h["threads"]):
        ids = decode_tokens(model, h["payload"], h["n_tokens"], tokenizer.eot_id, progress)
    data = tokenizer.decode_bytes(ids)
    if len(data) != h["n_bytes"] or hashlib.sha256(data).digest() != h["sha256"]:
        raise DataError(f"{name}: the decoded data fails its SHA-256 check, so this machine did not reproduce the "
                        f"compressor's probabilities: compressed with torch {h['torch']} on {h['machine']} "
                        f"({h['threads']} threads), this is torch {torch.__version__} on {platform.machine()}; "
                        f"decompress with the same checkpoint, torch version and machine type")
    return data


# ---- files and CLI --------------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror}); check the input path") from None


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)   # atomic: never a half-written output
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write it ({e.strerror}); check the output path") from None


def check_quantize(header: dict, mode: str, name: str) -> None:
    """CheckpointError unless `mode` is the quantize mode the file was compressed with."""
    if header["quantize"] != mode:
        raise CheckpointError(f"{name} was compressed with --quantize {header['quantize']}, not --quantize {mode}; "
                              f"decompress with --quantize {header['quantize']} (the model's probabilities "
                              f"must be the very same)")


def compress_file(checkpoint, src, dst, *, threads: int = 1, progress: bool = True, quantize: str = "none") -> Stats:
    """Compress file `src` into `dst` with the model of `checkpoint` (weights as `quantize` says)."""
    from gpt3lab import load

    data = _read(Path(src))
    model, tok = load(checkpoint, quantize=quantize)
    blob, stats = compress_bytes(model, tok, data, threads=threads, progress=progress)
    _write(Path(dst), blob)
    return stats


def decompress_file(checkpoint, src, dst, *, progress: bool = True, quantize: str = "none") -> int:
    """Decompress `src` (written by compress_file with the same checkpoint) into `dst`; returns its size."""
    from gpt3lab import load

    blob = _read(Path(src))
    h = read_header(blob, str(src))             # fail fast on a bad file or mode before loading the model
    check_quantize(h, quantize, str(src))
    model, tok = load(checkpoint, quantize=quantize)
    data = decompress_bytes(model, tok, blob, name=str(src), checkpoint=str(checkpoint), progress=progress)
    _write(Path(dst), data)
    return len(data)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint or run directory (the same one for both directions)")
    p.add_argument("input", help="file to compress (any bytes), or with -d a file written by compress")
    p.add_argument("output", help="where to write the result (replaced atomically)")
    p.add_argument("-d", "--decompress", action="store_true", help="decompress instead of compress")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads while compressing (recorded; decompression uses the same number)")
    p.add_argument("--no-progress", action="store_true")
    add_quantize_argument(p)


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    if args.decompress:
        n = decompress_file(args.checkpoint, args.input, args.output, progress=not args.no_progress,
                            quantize=args.quantize)
        print(f"decompressed {args.input} -> {args.output}: {n:,} bytes, SHA-256 verified")
        return 0
    s = compress_file(args.checkpoint, args.input, args.output, threads=args.threads,
                      progress=not args.no_progress, quantize=args.quantize)
    over = (s.bits_per_byte / s.ideal_bits_per_byte - 1) * 100 if s.ideal_bits else 0.0
    print(f"compressed {args.input} -> {args.output}: {s.n_bytes:,} -> {s.file_bytes:,} bytes "
          f"({s.n_tokens:,} tokens), {s.bits_per_byte:.3f} bits/byte; model cross-entropy "
          f"{s.ideal_bits_per_byte:.3f} bits/byte (+{over:.2f}% incl. header); "
          f"{s.n_bytes / max(s.seconds, 1e-9):,.0f} bytes/s")
    return 0
