"""The train/val split: a rule on a document's index and the seed, decided before the document is read.

A streamed corpus has no known size up front, so the split cannot be "shuffle, then take bytes until
val holds its share" (the rule before streaming). Instead documents 1, 2, 3, ... are cut into
consecutive strata of 1/f documents (f = val fraction, as an exact fraction) and one document of each
stratum, chosen by a hash of (seed, stratum), goes to val. Hence:
- deterministic, O(1) per document, the same for any worker count, and appending documents to a
  corpus never moves earlier ones between splits;
- every prefix of the corpus holds out f of its documents to within one document (an independent coin
  per document could give a small corpus 0 or 3x the asked share);
- document 0 always trains, so train is never empty. For f > 1/2 the rule picks train documents at
  rate 1 - f instead (strata must hold at least one document).
The split counts documents, not bytes; `prepare` warns when val's share of the bytes ends up far from f.
"""
from __future__ import annotations

import hashlib
from fractions import Fraction

from gpt3lab.errors import DataError


def check_fraction(val_fraction: float) -> Fraction:
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val fraction {val_fraction!r} must be in [0, 1), e.g. --val-fraction 0.1")
    return Fraction(val_fraction).limit_denominator(10**6)


def is_val(index: int, val_fraction: float, seed: int = 0) -> bool:
    """Whether document `index` (0-based, counting non-empty documents) belongs to the val split."""
    f = check_fraction(val_fraction)
    if f == 0 or index == 0:
        return False
    if f <= Fraction(1, 2):
        return _picked(index - 1, f, seed)
    return not _picked(index - 1, 1 - f, seed)


def _picked(m: int, rate: Fraction, seed: int) -> bool:
    """Whether position m is its stratum's pick; stratum k = positions [ceil(k/rate), ceil((k+1)/rate))."""
    p, q = rate.numerator, rate.denominator
    k = m * p // q
    lo, hi = -(-k * q // p), -(-(k + 1) * q // p)
    digest = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
    return m == lo + int.from_bytes(digest, "little") % (hi - lo)
