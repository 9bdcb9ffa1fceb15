"""Tokenize jobs (lists of texts) in N worker processes; results come back in submission order.

At most 2N jobs are in flight (the next is read only when the oldest result is taken), so memory is
bounded by the job size and N, not by the corpus. One worker runs inline in the calling process.
Workers are spawned (not forked: the parent may hold threads) and import only the tokenizer.

Workers never outlive the parent: each watches its parent's pid (as PyTorch's DataLoader workers do) and
exits within WATCH_SECONDS of a SIGKILL of the parent, after which multiprocessing's resource tracker
exits too. A worker that dies (killed, out of memory) is one DataError naming the job it was given.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from gpt3lab.errors import DataError
from gpt3lab.tokenizer import Tokenizer

WATCH_SECONDS = 0.5  # how often a worker checks that its parent is alive
_worker_tok: Tokenizer | None = None  # the worker process's tokenizer (set by _init)


def encode_texts(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """(tokens of the concatenated texts, their UTF-8 bytes); "<|endoftext|>" is the special token."""
    arrays = [np.asarray(tok.encode(t), dtype=dtype) for t in texts]
    nbytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    return (np.concatenate(arrays) if arrays else np.zeros(0, dtype)), nbytes


def _init(tokenizer_dir: str, parent: int) -> None:
    global _worker_tok
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker_tok = Tokenizer.load(tokenizer_dir)


def _exit_with_parent(parent: int) -> None:
    """Exit once the parent is gone (this process is then re-parented, so its parent pid changes)."""
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)


def _work(texts: list[str], dtype: str) -> tuple[np.ndarray, int]:
    return encode_texts(_worker_tok, texts, np.dtype(dtype))


def encode_ordered(jobs: Iterable[tuple[object, list[str]]], tok: Tokenizer, dtype: np.dtype,
                   workers: int = 1, tokenizer_dir: Path | None = None,
                   describe: Callable[[object], str] = str) -> Iterator[tuple[object, tuple]]:
    """(meta, (tokens, nbytes)) for each (meta, texts) job, in job order; `tokenizer_dir` holds `tok`
    saved (the workers load it from there); describe(meta) names a job in errors."""
    if workers <= 1:
        for meta, texts in jobs:
            yield meta, encode_texts(tok, texts, dtype)
        return
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init, initargs=(str(tokenizer_dir), os.getpid()))
    pending: deque = deque()
    try:
        for meta, texts in jobs:
            pending.append((meta, ex.submit(_work, texts, np.dtype(dtype).name)))
            if len(pending) >= 2 * workers:
                meta0, fut = pending[0]
                yield meta0, fut.result()
                pending.popleft()
        while pending:
            meta0, fut = pending[0]
            yield meta0, fut.result()
            pending.popleft()
    except BrokenProcessPool:      # from result() or from submit() once the pool has noticed the death
        job = describe(pending[0][0]) if pending else "the corpus"
        raise DataError(f"a tokenizer worker process died (killed, or out of memory) while tokenizing {job}; "
                        f"run prepare again, with fewer --workers if memory is short") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
