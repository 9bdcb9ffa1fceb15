"""An integer range coder (arithmetic coding with byte-wise output) over cumulative frequencies.

The interval is [low, low + rng) on a 64-bit scale. Coding a symbol with frequency `freq` at cumulative
offset `cum` out of `total` narrows it to r = rng // total:  low += r * cum, rng = r * freq. Whenever
rng drops below 2^56 the top byte of `low` is settled and shifted out, so rng stays in [2^56, 2^64)
and a total of up to 2^32 loses at most total / rng < 2^-24 of the interval to rounding.

`low + r * cum` can pass 2^64: that carry belongs to bytes already written, so it is added into the
output (0xFF bytes roll over to 0x00). It never runs past the first byte because the interval only
ever shrinks inside the initial [0, 2^64).

Exact integer arithmetic only (Python ints, masked to 64 bits), so encoder and decoder agree bit for
bit whenever they are fed the same frequencies.
"""
from __future__ import annotations

BITS = 64
TOP = 1 << BITS           # the interval lives in [0, TOP)
MASK = TOP - 1
RENORM = 1 << (BITS - 8)  # rng is kept >= RENORM by shifting out settled bytes
MAX_TOTAL = 1 << 32


class RangeEncoder:
    """Feed (cum, freq, total) triples with `encode`, then `finish()` -> bytes."""

    def __init__(self) -> None:
        self.low = 0
        self.rng = MASK
        self.out = bytearray()

    def encode(self, cum: int, freq: int, total: int) -> None:
        """Code the symbol occupying [cum, cum + freq) of a table summing to `total`."""
        if not (0 < freq and 0 <= cum and cum + freq <= total <= MAX_TOTAL):
            raise ValueError(f"bad symbol: cum={cum} freq={freq} total={total}")
        r = self.rng // total
        self.low += r * cum
        self.rng = r * freq
        if self.low >= TOP:                 # carry into the bytes already written
            self.low -= TOP
            self._carry()
        while self.rng < RENORM:
            self.out.append(self.low >> (BITS - 8))
            self.low = (self.low << 8) & MASK
            self.rng <<= 8

    def _carry(self) -> None:
        i = len(self.out) - 1
        while self.out[i] == 0xFF:
            self.out[i] = 0
            i -= 1
        self.out[i] += 1

    def finish(self) -> bytes:
        """Flush: write the shortest value inside [low, low + rng) (the decoder pads with zero bytes)."""
        # rng >= 2^56, so a multiple of 2^56 lies in [low, low + 2^56): one byte pins it
        v = (self.low + RENORM - 1) & ~(RENORM - 1)
        if v >= TOP:
            self._carry()
        elif v:
            self.out.append(v >> (BITS - 8))
        out = bytes(self.out)
        return out.rstrip(b"\0")            # trailing zeros are implied by the decoder's padding


class RangeDecoder:
    """Mirror of RangeEncoder: `target(total)` -> a count in [0, total); then `consume(cum, freq)`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.rng = MASK
        self.code = 0                        # value - low, always < rng for a valid stream
        for _ in range(BITS // 8):
            self.code = (self.code << 8) | self._byte()
        self._r = 0

    def _byte(self) -> int:
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def target(self, total: int) -> int:
        """The cumulative count the next symbol's [cum, cum + freq) must contain."""
        self._r = self.rng // total
        # a corrupt stream can point past the table; clamp (the checksum reports it afterwards)
        return min(self.code // self._r, total - 1)

    def consume(self, cum: int, freq: int) -> None:
        """Remove the decoded symbol [cum, cum + freq) (same arithmetic as RangeEncoder.encode)."""
        self.code -= self._r * cum
        self.rng = self._r * freq
        while self.rng < RENORM:
            self.code = ((self.code << 8) | self._byte()) & MASK
            self.rng <<= 8
