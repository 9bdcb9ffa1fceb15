"""Token ids -> text deltas, safe to stream: whole UTF-8 characters only, stop strings cut out.

Two things force text to be held back while streaming:
* a token may end inside a multi-byte UTF-8 character (an emoji is often 2-4 byte tokens): its bytes
  wait until the character is complete;
* the text so far may end with the start of a stop string ("\\n\\nQ" when stopping at "\\n\\nQ:"):
  it waits until it either completes the stop string (then it is dropped) or cannot anymore.
Concatenating every delta plus `flush()` gives exactly the final text.
"""
from __future__ import annotations

import codecs
from collections.abc import Iterable


class Utf8Stream:
    """Bytes in, complete characters out; invalid bytes become U+FFFD like bytes.decode(errors='replace')."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._dec.decode(data)

    def flush(self) -> str:
        """End of stream: an incomplete trailing character becomes U+FFFD."""
        return self._dec.decode(b"", final=True)


class StopMatcher:
    """Finds the first stop string in streamed text, across any chunk boundaries."""

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = [s for s in stops if s]
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Add text -> (text safe to emit, stopped). After a stop, the stop string and the rest are dropped."""
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[:min(hits)], True
        hold = self._partial_len(buf)
        self._held = buf[len(buf) - hold:]
        return buf[:len(buf) - hold], False

    def _partial_len(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """End of stream without a stop: the held-back text is plain text after all."""
        out, self._held = self._held, ""
        return out


class TextStream:
    """Token ids -> streamable text deltas for one sample (UTF-8-safe, stop strings removed)."""

    def __init__(self, tokenizer, stop: Iterable[str] = ()):
        self.tokenizer = tokenizer
        self.utf8 = Utf8Stream()
        self.matcher = StopMatcher(stop)

    def push(self, token_id: int) -> tuple[str, bool]:
        """-> (text delta, whether a stop string just completed)."""
        return self.matcher.push(self.utf8.push(self.tokenizer.token_bytes(token_id)))

    def flush(self) -> str:
        """The text still held back, at the end of the sample."""
        text, stopped = self.matcher.push(self.utf8.flush())
        return text if stopped else text + self.matcher.flush()


__all__ = ["Utf8Stream", "StopMatcher", "TextStream"]
