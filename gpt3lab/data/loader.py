"""Random sliding windows of context+1 tokens -> (x, y) batches, seeded, rank-aware, resumable.

Step s draws the GLOBAL batch of world_size * batch_size window starts from an RNG seeded only by
(seed, s); rank r keeps rows [r*B, (r+1)*B). Hence one process with batch_size = world*B sees exactly
the union of what the ranks see, ranks never share a row, and resuming needs only (seed, step).
Within one global batch starts are drawn without replacement (when the split has enough windows), so
ranks also never get the same window in a step. A window never straddles two shard files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpt3lab.data.shards import open_shards, read_header
from gpt3lab.errors import DataError

_TRAIN_STREAM, _FIXED_STREAM = 0, 1  # separate RNG streams for training steps and fixed eval batches


class WindowLoader:
    """Batches of `batch_size` windows (x, y), each (B, T) int64, from `split` of a prepared data dir."""

    def __init__(self, data_dir: str | Path, split: str, context: int, batch_size: int, *,
                 seed: int = 0, rank: int = 0, world_size: int = 1, vocab_size: int | None = None):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if context < 1 or batch_size < 1:
            raise DataError(f"context={context} and batch_size={batch_size} must be positive")
        self.data_dir, self.split, self.context, self.batch_size = Path(data_dir), split, context, batch_size
        self.seed, self.rank, self.world_size, self.step = int(seed), rank, world_size, 0
        self.header = read_header(data_dir, split)
        if vocab_size is not None and vocab_size < int(self.header["vocab_size"]):
            raise DataError(f"{self.data_dir}/{split}.json was tokenized with vocab_size "
                            f"{self.header['vocab_size']} ({self.header['tokenizer']}) but the model has "
                            f"vocab_size {vocab_size}; prepare the data with the model's tokenizer")
        self.shards = open_shards(data_dir, self.header)
        # window starts per shard: 0 .. len-(T+1); flattened into one index space
        counts = np.array([max(len(s) - context, 0) for s in self.shards], dtype=np.int64)
        self._cum = np.concatenate([[0], np.cumsum(counts)])
        if self._cum[-1] == 0:
            raise DataError(f"{self.data_dir}/{split} has {self.num_tokens} tokens, fewer than context+1="
                            f"{context + 1} in any shard; use a smaller context or more text "
                            f"(or a larger --val-fraction for val)")

    @property
    def num_tokens(self) -> int:
        return int(self.header["num_tokens"])

    @property
    def num_bytes(self) -> int:
        """UTF-8 bytes of the split's text (for bits/byte = loss * tokens / (bytes * ln 2))."""
        return int(self.header["num_bytes"])

    @property
    def num_windows(self) -> int:
        return int(self._cum[-1])

    def _starts(self, rng: np.random.Generator, global_batch: int) -> np.ndarray:
        n = self.num_windows
        if global_batch <= n:
            return rng.choice(n, size=global_batch, replace=False)
        return rng.integers(0, n, size=global_batch)  # tiny split: repeats are unavoidable

    def _gather(self, flat: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        shard = np.searchsorted(self._cum, flat, side="right") - 1
        rows = [np.asarray(self.shards[k][i - self._cum[k]: i - self._cum[k] + self.context + 1])
                for k, i in zip(shard, flat)]
        buf = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T+1)
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()  # x, y: (B, T)

    def window_starts(self, step: int, batch_size: int | None = None, *, stream: int = _TRAIN_STREAM,
                      seed: int | None = None) -> np.ndarray:
        """This rank's window ids (flat index over all shards' window starts) at `step`."""
        b = self.batch_size if batch_size is None else int(batch_size)
        rng = np.random.default_rng([self.seed if seed is None else seed, stream, step])
        starts = self._starts(rng, self.world_size * b)  # the global batch, same on every rank
        return starts[self.rank * b:(self.rank + 1) * b]

    def _batch(self, stream: int, index: int, seed: int, batch_size: int):
        return self._gather(self.window_starts(index, batch_size, stream=stream, seed=seed))

    def next_batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y); `batch_size` overrides the per-rank batch for this step (batch-size ramp)."""
        b = self.batch_size if batch_size is None else int(batch_size)
        if b < 1:
            raise DataError(f"batch_size={b} must be positive")
        out = self._batch(_TRAIN_STREAM, self.step, self.seed, b)
        self.step += 1
        return out

    def fixed_batches(self, n: int, seed: int = 0, batch_size: int | None = None) -> list:
        """`n` deterministic (x, y) batches (same on every call, rank-sharded like training batches)."""
        b = self.batch_size if batch_size is None else int(batch_size)
        return [self._batch(_FIXED_STREAM, i, seed, b) for i in range(n)]

    def sequential_batches(self, batch_size: int | None = None):
        """Yield (x, y) over consecutive non-overlapping windows covering the split once (rank 0 only
        semantics: every rank gets every batch), for exact perplexity / bits-per-byte."""
        b = self.batch_size if batch_size is None else int(batch_size)
        starts = np.concatenate([self._cum[k] + np.arange(0, len(s) - self.context, self.context)
                                 for k, s in enumerate(self.shards) if len(s) > self.context])
        for i in range(0, len(starts), b):
            yield self._gather(starts[i:i + b])

    def state_dict(self) -> dict:
        """JSON-serialisable position: loading it makes the next batches identical."""
        return {"split": self.split, "seed": self.seed, "step": self.step, "context": self.context,
                "batch_size": self.batch_size, "tokenizer": self.header["tokenizer"],
                "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict) -> None:
        if state.get("tokenizer", self.header["tokenizer"]) != self.header["tokenizer"] or \
                state.get("num_tokens", self.num_tokens) != self.num_tokens:
            raise DataError(f"loader state was saved for other data ({state.get('tokenizer')}, "
                            f"{state.get('num_tokens')} tokens) than {self.data_dir}/{self.split}; "
                            f"resume with the same data directory")
        self.seed, self.step = int(state["seed"]), int(state["step"])
