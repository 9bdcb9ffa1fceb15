"""`gpt3lab compress`: a language model is a compressor — its next-token probabilities drive a range coder.

    gpt3lab compress CHECKPOINT IN OUT          # IN (any bytes) -> OUT (.g3lz)
    gpt3lab compress -d CHECKPOINT IN OUT       # back, verified against the original's SHA-256

Input: the bytes are read as UTF-8 and tokenized; bytes that are not valid UTF-8 are escaped losslessly
as the tokenizer's single-byte tokens (every byte-level BPE has all 256), so any file round-trips;
text is merely what the model predicts well. A sequence longer than the context slides (model.py).

File format (little-endian), version 2:
    magic "G3LZ" | version u8 | flags u8 | total_bits u8 | threads u16 | checkpoint fingerprint 16B |
    token count u64 | original byte length u64 | SHA-256 of the original 32B | payload length u64 |
    torch version (u8 length + ASCII) | machine (u8 length + ASCII) | meta (u16 length + JSON object) |
    payload | CRC32 of all before u32
flags bit 0 (RAW): the payload is the original bytes, stored because the model could not code them in
fewer bytes (random data, or bytes the tokenizer cannot express); such files decode without the model.
An empty input is stored raw too (header only). `meta` is where later header fields go (e.g. how the
weights were quantized) without another layout change; readers ignore keys they do not know.
meta "quantize": the --quantize mode of the model (gpt3lab.model.quant); decoding refuses another mode.
Decoding needs the same checkpoint (fingerprint checked up front), and the same torch version and
machine type (recorded; a mismatch that changes any probability shows up as a SHA-256 failure).
A crafted header cannot make decoding run long: the token count is bounded by the byte count and by what
the payload can hold, and a decoder that reads past the payload's end stops with an error. Nor can it crash
or mislead: every field is bounded before use (threads in [1, MAX_THREADS], the torch-version and machine
strings printable ASCII, meta a JSON object nested at most META_DEPTH deep whose "quantize" is a known
mode), so a forged file is a one-line DataError, never a thread-pool crash, a RecursionError or terminal
escape codes in a message.
"""
from __future__ import annotations

import argparse
import hashlib
import json
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

from gpt3lab.argtypes import add_quantize_argument, int_range
from gpt3lab.compress.coder import RangeDecoder, RangeEncoder
from gpt3lab.compress.model import (TOTAL, TOTAL_BITS, Predictor, find_symbol, fingerprint, fixed_threads,
                                    quantise, symbol_range)
from gpt3lab.errors import CheckpointError, ConfigError, DataError
from gpt3lab.model.quant import mode_of

MAGIC = b"G3LZ"
VERSION = 2
FLAG_RAW = 1                  # payload = the original bytes
KNOWN_FLAGS = FLAG_RAW
_HEAD = struct.Struct("<4sBBBH16sQQ32sQ")
# bytes a valid decoder may read past the payload's end: its 8-byte register plus trailing zero bytes the
# encoder strips (a run of 64 zero bytes at the very end has probability ~2^-512)
READ_PAST_END = 72
_ESCAPED = re.compile("([\udc80-\udcff]+)")   # surrogateescape's stand-ins for non-UTF-8 bytes
MAX_THREADS = 1024            # --threads' bound; a header naming more is forged (torch cannot start 65535)
META_DEPTH = 8                # JSON nesting allowed in meta (it holds flat fields today)
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


@dataclass
class Stats:
    """What one compression did: sizes, the model's own -log2 p total, and time."""

    n_bytes: int
    n_tokens: int
    file_bytes: int
    payload_bytes: int
    ideal_bits: float      # sum over tokens of -log2 p(token) under the fp32 softmax (cross-entropy)
    seconds: float

    raw: bool = False      # stored as is (the model could not code it smaller)

    @property
    def bits_per_byte(self) -> float:
        """File bits per input byte; NaN for an empty input (there is no rate to report)."""
        return 8 * self.file_bytes / self.n_bytes if self.n_bytes else math.nan

    @property
    def ideal_bits_per_byte(self) -> float:
        return self.ideal_bits / self.n_bytes if self.n_bytes else math.nan


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
    """Inverse of encode_tokens: `n_tokens` ids from the payload under the same model.

    DataError when the decoder runs past the payload (a header claiming more tokens than were coded)."""
    dec, pred, ids = RangeDecoder(payload), Predictor(model, start_id), []
    logits = pred.first() if n_tokens else None
    with _progress(n_tokens, progress, "decompress") as bar:
        for i in range(n_tokens):
            cum = quantise(logits)
            t = find_symbol(cum, dec.target(TOTAL))
            dec.consume(*symbol_range(cum, t))
            if dec.pos > len(payload) + READ_PAST_END:
                raise DataError(f"the payload ends after {i + 1:,} of the {n_tokens:,} tokens its header "
                                f"claims; the file is truncated or corrupt (copy it again)")
            ids.append(t)
            if i + 1 < n_tokens:
                logits = pred.feed(t)
            bar.update()
    return ids


def _short(s: str) -> bytes:
    return bytes([len(s.encode()[:255])]) + s.encode()[:255]


def _model_code(model, tokenizer, data: bytes, threads: int, progress: bool) -> tuple[list[int], bytes, float]:
    """(token ids, payload, ideal bits) of `data` under the model; ([], b"", 0.0) when the tokenizer
    cannot express it (it is then stored raw)."""
    try:
        ids = to_tokens(tokenizer, data)
    except DataError:
        return [], b"", 0.0
    if tokenizer.decode_bytes(ids) != data:   # cannot happen for a byte-level BPE; never write a bad file
        raise DataError(f"tokenizer {tokenizer.name!r} does not reproduce the input exactly; cannot compress it")
    with fixed_threads(threads):
        payload, ideal = encode_tokens(model, ids, tokenizer.eot_id, progress)
    return ids, payload, ideal


def compress_bytes(model, tokenizer, data: bytes, *, threads: int = 1, progress: bool = False,
                   meta: dict | None = None) -> tuple[bytes, Stats]:
    """Compress `data` with (model, tokenizer) on CPU with `threads` threads -> (file bytes, Stats).

    Stored raw (flag RAW) when model coding does not make it smaller, so a file is never more than the
    header larger than its input. meta: extra header fields (a JSON object)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"threads={threads!r} must be a whole number in [1, {MAX_THREADS}]")
    meta_bytes = json.dumps({**({} if mode_of(model) == "none" else {"quantize": mode_of(model)}), **(meta or {})},
                            sort_keys=True).encode()      # quantize absent: none (fp32)
    if _depth(meta_bytes) > META_DEPTH or len(meta_bytes) > 0xFFFF:
        raise ConfigError(f"meta nests deeper than {META_DEPTH} levels or exceeds 64 KiB; readers refuse it")
    t0 = time.perf_counter()
    model.eval()
    ids, payload, ideal = _model_code(model, tokenizer, data, threads, progress)
    raw = not ids or len(payload) >= len(data)
    if raw:
        ids, payload = [], data
    head = _HEAD.pack(MAGIC, VERSION, FLAG_RAW if raw else 0, TOTAL_BITS, threads, fingerprint(model, tokenizer),
                      len(ids), len(data), hashlib.sha256(data).digest(), len(payload))
    body = head + _short(torch.__version__) + _short(platform.machine()) + struct.pack("<H", len(meta_bytes)) \
        + meta_bytes + payload
    blob = body + struct.pack("<I", zlib.crc32(body))
    return blob, Stats(len(data), len(ids), len(blob), len(payload), ideal, time.perf_counter() - t0, raw)


def read_header(blob: bytes, name: str = "<data>") -> dict:
    """Parse and check a compressed file's framing (magic, version, lengths, CRC32). DataError if bad."""
    if blob[:4] != MAGIC[:len(blob[:4])] or not blob:
        raise DataError(f"{name}: not a gpt3lab compressed file (no {MAGIC.decode()} header); "
                        f"it must be written by `gpt3lab compress`")
    if len(blob) < _HEAD.size + 8:
        raise DataError(f"{name}: truncated: {len(blob):,} bytes, fewer than a header; copy the file again")
    magic, version, flags, total_bits, threads, fp, n_tok, n_bytes, sha, n_payload = _HEAD.unpack_from(blob)
    if version != VERSION or total_bits != TOTAL_BITS or flags & ~KNOWN_FLAGS:
        raise DataError(f"{name}: compressed-file version {version} (total 2^{total_bits}, flags {flags:#x}); "
                        f"this gpt3lab reads version {VERSION} (2^{TOTAL_BITS}); use the gpt3lab that wrote it")
    fields, pos = [], _HEAD.size
    for size_fmt in ("<B", "<B", "<H"):                   # torch version, machine, meta
        n_len = struct.calcsize(size_fmt)
        if pos + n_len > len(blob) - 4:
            raise DataError(f"{name}: truncated inside the header; copy the file again")
        n = struct.unpack_from(size_fmt, blob, pos)[0]
        pos += n_len
        if pos + n > len(blob) - 4:
            raise DataError(f"{name}: truncated or corrupt: a header field of {n} bytes runs past the end of "
                            f"the file; copy it again")
        fields.append(blob[pos:pos + n])
        pos += n
    expected = pos + n_payload + 4
    if len(blob) != expected:
        raise DataError(f"{name}: {len(blob):,} bytes but its header says {expected:,}; the file is truncated "
                        f"or has extra bytes (copy it again)")
    if zlib.crc32(blob[:-4]) != struct.unpack("<I", blob[-4:])[0]:
        raise DataError(f"{name}: corrupt (CRC32 mismatch); the file was damaged, copy it again")
    if not 1 <= threads <= MAX_THREADS:
        raise DataError(f"{name}: corrupt header: {threads} threads is outside [1, {MAX_THREADS}]; the file was "
                        f"damaged or forged, copy it again")
    h = dict(raw=bool(flags & FLAG_RAW), threads=threads, fingerprint=fp, n_tokens=n_tok, n_bytes=n_bytes,
             sha256=sha, torch=_ascii(fields[0], "torch version", name), machine=_ascii(fields[1], "machine", name),
             meta=_meta(fields[2], name), payload=blob[pos:pos + n_payload])
    _check_counts(h, name)
    return h


def _ascii(raw: bytes, what: str, name: str) -> str:
    """A header string; DataError when it holds anything but printable ASCII (never echo control bytes)."""
    if not _PRINTABLE.fullmatch(raw):
        raise DataError(f"{name}: corrupt header: its {what} field holds non-printable bytes; the file was "
                        f"damaged or forged, copy it again")
    return raw.decode("ascii")


def _meta(raw: bytes, name: str) -> dict:
    """The meta JSON object, bounded: nesting at most META_DEPTH, "quantize" (if any) a known mode."""
    from gpt3lab.model.quant import MODES

    meta = None
    if _depth(raw) <= META_DEPTH:          # a 30,000-deep object would end in a RecursionError
        try:
            meta = json.loads(raw.decode()) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    if not isinstance(meta, dict):
        raise DataError(f"{name}: corrupt header (its meta field is not a JSON object of at most {META_DEPTH} "
                        f"levels); copy the file again")
    if meta.get("quantize", "none") not in MODES:
        raise DataError(f"{name}: corrupt header: meta quantize {ascii(str(meta['quantize'])[:40])} is not one of "
                        f"{', '.join(MODES)}; the file was damaged or written by a newer gpt3lab")
    return meta


def _depth(raw: bytes) -> int:
    """Deepest bracket nesting of a JSON text, counted without parsing (brackets in strings overcount: that
    only refuses a meta no gpt3lab writes)."""
    depth = deepest = 0
    for b in raw:
        if b in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif b in b"]}":
            depth -= 1
    return deepest


def _check_counts(h: dict, name: str) -> None:
    """Counts that the file cannot back are corrupt, found before any decoding work: a raw payload is the
    data; a token is at least one byte. (The decoder also stops if it reads past the payload's end.)"""
    n_tok, n_bytes, n_payload = h["n_tokens"], h["n_bytes"], len(h["payload"])
    if (n_tok != 0 or n_payload != n_bytes) if h["raw"] else (n_tok > n_bytes or (n_tok > 0) != (n_bytes > 0)):
        raise DataError(f"{name}: corrupt header: {n_tok:,} tokens / {n_bytes:,} bytes cannot come from a "
                        f"{n_payload:,}-byte {'raw ' if h['raw'] else ''}payload; the file was damaged or forged, "
                        f"copy it again")


def decompress_bytes(model, tokenizer, blob: bytes, *, name: str = "<data>", checkpoint: str = "the checkpoint",
                     progress: bool = False) -> bytes:
    """Inverse of compress_bytes. DataError (bad file) or CheckpointError (wrong model); never garbage."""
    h = read_header(blob, name)
    if h["raw"]:
        data = h["payload"]
    else:
        check_quantize(h, mode_of(model), name)
        if h["fingerprint"] != fingerprint(model, tokenizer):
            raise CheckpointError(f"{name} was compressed with a different model than {checkpoint} (fingerprint "
                                  f"{h['fingerprint'].hex()}, this one {fingerprint(model, tokenizer).hex()}); "
                                  f"decompress with the checkpoint that compressed it")
        model.eval()
        try:
            with fixed_threads(h["threads"]):
                ids = decode_tokens(model, h["payload"], h["n_tokens"], tokenizer.eot_id, progress)
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
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
    """CheckpointError unless `mode` is the quantize mode a model-coded file was compressed with."""
    want = header["meta"].get("quantize", "none")
    if not header["raw"] and want != mode:
        raise CheckpointError(f"{name} was compressed with --quantize {want}, not --quantize {mode}; "
                              f"decompress with --quantize {want} (the model's probabilities must be the very same)")


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
    model, tok = (None, None) if h["raw"] else load(checkpoint, quantize=quantize)   # raw files need no model
    data = decompress_bytes(model, tok, blob, name=str(src), checkpoint=str(checkpoint), progress=progress)
    _write(Path(dst), data)
    return len(data)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint or run directory (the same one for both directions)")
    p.add_argument("input", help="file to compress (any bytes), or with -d a file written by compress")
    p.add_argument("output", help="where to write the result (replaced atomically)")
    p.add_argument("-d", "--decompress", action="store_true", help="decompress instead of compress")
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=1,
                   help="CPU threads while compressing (recorded; decompression uses the same number)")
    p.add_argument("--no-progress", action="store_true")
    add_quantize_argument(p)


def run(args: argparse.Namespace) -> int:
    if args.decompress:
        n = decompress_file(args.checkpoint, args.input, args.output, progress=not args.no_progress,
                            quantize=args.quantize)
        print(f"decompressed {args.input} -> {args.output}: {n:,} bytes, SHA-256 verified")
        return 0
    s = compress_file(args.checkpoint, args.input, args.output, threads=args.threads,
                      progress=not args.no_progress, quantize=args.quantize)
    print(f"compressed {args.input} -> {args.output}: {summary(s)}")
    return 0


def summary(s: Stats) -> str:
    """One line about a compression: sizes and rates (no rate for an empty input; raw storage said)."""
    if not s.n_bytes:
        return f"empty input -> {s.file_bytes:,} bytes (header only)"
    sizes = f"{s.n_bytes:,} -> {s.file_bytes:,} bytes, {s.bits_per_byte:.3f} bits/byte"
    if s.raw:
        model = f"the model needs {s.ideal_bits_per_byte:.3f} bits/byte" if s.ideal_bits else \
            "the tokenizer cannot express it"
        return f"{sizes}; stored raw ({model}, no gain over the input)"
    over = (s.bits_per_byte / s.ideal_bits_per_byte - 1) * 100 if s.ideal_bits else 0.0
    return (f"{sizes} ({s.n_tokens:,} tokens); model cross-entropy {s.ideal_bits_per_byte:.3f} bits/byte "
            f"(+{over:.2f}% incl. header); {s.n_bytes / max(s.seconds, 1e-9):,.0f} bytes/s")
