"""Tokenize jobs (lists of texts) in N worker processes; results come back in submission order.

At most 2N jobs are in flight (the next is read only when the oldest result is taken), so memory is
bounded by the job size and N, not by the corpus. One worker runs inline in the calling process.
Workers are spawned (not forked: the parent may hold threads) and import only the tokenizer.
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from gpt3lab.tokenizer import Tokenizer

_worker_tok: Tokenizer | None = None  # the worker process's tokenizer (set by _init)


def encode_texts(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """(tokens of the concatenated texts, their UTF-8 bytes); "<|endoftext|>" is the special token."""
    arrays = [np.asarray(tok.encode(t), dtype=dtype) for t in texts]
    nbytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    return (np.concatenate(arrays) if arrays else np.zeros(0, dtype)), nbytes


def _init(tokenizer_dir: str) -> None:
    global _worker_tok
    _worker_tok = Tokenizer.load(tokenizer_dir)


def _work(texts: list[str], dtype: str) -> tuple[np.ndarray, int]:
    return encode_texts(_worker_tok, texts, np.dtype(dtype))


def encode_ordered(jobs: Iterable[tuple[object, list[str]]], tok: Tokenizer, dtype: np.dtype,
                   workers: int = 1, tokenizer_dir: Path | None = None) -> Iterator[tuple[object, tuple]]:
    """(meta, (tokens, nbytes)) for each (meta, texts) job, in job order; `tokenizer_dir` holds `tok`
    saved (the workers load it from there)."""
    if workers <= 1:
        for meta, texts in jobs:
            yield meta, encode_texts(tok, texts, dtype)
        return
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init, initargs=(str(tokenizer_dir),))
    pending: deque = deque()
    try:
        for meta, texts in jobs:
            pending.append((meta, ex.submit(_work, texts, np.dtype(dtype).name)))
            if len(pending) >= 2 * workers:
                meta0, fut = pending.popleft()
                yield meta0, fut.result()
        while pending:
            meta0, fut = pending.popleft()
            yield meta0, fut.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
