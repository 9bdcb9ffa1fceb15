"""Paged KV cache: a fixed pool of blocks, per-sequence block tables, prefix caching with LRU eviction.

A *block* holds the keys and values of `block_size` consecutive tokens of ONE layer, so banded layers
can give back blocks that fall wholly outside their window while dense layers keep theirs. A sequence
owns one block table per layer (physical block ids; -1 = not held).

Prefix caching: once a block is full, it is registered under (hash of every token up to and including
it, layer). A new request walks its prompt's block hashes and takes the longest run already cached.
Blocks nobody references stay cached, oldest-released first out (LRU), until the pool needs them.

`PagedStep` is what the model sees during one forward pass over a packed batch (1, N) of several
sequences' tokens: it implements the model's cache protocol (positions / attend / advance) by
writing each token's k, v into its sequence's blocks and attending per sequence over gathered blocks.
`PagedDecode` is its decode-rows part, over tensors only (the compiled decode step runs it alone).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt3lab.config import ModelConfig


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    """Hash of a full block given its parent's hash: identifies all tokens from position 0 to its end."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()


def prefix_hashes(tokens: list[int], block_size: int) -> list[bytes]:
    """Hashes of the full blocks of `tokens` (a trailing partial block has none)."""
    out, parent = [], b""
    for j in range(len(tokens) // block_size):
        parent = block_hash(parent, tokens[j * block_size:(j + 1) * block_size])
        out.append(parent)
    return out


class BlockPool:
    """`num_blocks` physical blocks (+1 scratch block, never handed out) with refcounts and a prefix cache.

    Storage: k, v of shape (n_head, num_blocks + 1, block_size, d_head), shared by all layers. Heads come
    first so that gathering a table's blocks along dim 1 gives (nh, nb, bs, hs), whose (nb, bs) merge into
    one key axis as a free view: one copy per gather, straight into a reused buffer (see `gather`).
    A block is in exactly one state: free (no content), cached (ref 0 but registered under a hash,
    evictable, LRU order), or used (ref > 0).
    """

    def __init__(self, cfg: ModelConfig, num_blocks: int, block_size: int, device="cpu",
                 dtype: torch.dtype = torch.float32, enable_prefix_caching: bool = True):
        self.cfg, self.num_blocks, self.block_size = cfg, num_blocks, block_size
        shape = (cfg.n_head, num_blocks + 1, block_size, cfg.d_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._buf = torch.empty(0, device=device, dtype=dtype)    # gather output, grown on demand
        self.scratch = num_blocks                           # stands in for missing blocks in gathers
        self.ref = [0] * num_blocks
        self.key_of: list[tuple | None] = [None] * num_blocks   # (hash, layer) when registered
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.lru: OrderedDict[int, None] = OrderedDict()    # cached, unreferenced blocks; oldest first
        self.table: dict[tuple, int] = {}                   # (hash, layer) -> block id
        self.enable_prefix_caching = enable_prefix_caching

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        return 2 * cfg.n_head * block_size * cfg.d_head * torch.empty((), dtype=dtype).element_size()

    def available(self) -> int:
        """Blocks that can be handed out now (free + evictable)."""
        return len(self.free) + len(self.lru)

    def used(self) -> int:
        return self.num_blocks - self.available()

    def allocate(self) -> int:
        """A block with ref 1: a free one, else the least recently released cached one (evicted)."""
        if self.free:
            b = self.free.pop()
        else:
            b, _ = self.lru.popitem(last=False)
            del self.table[self.key_of[b]]
            self.key_of[b] = None
        self.ref[b] = 1
        return b

    def acquire(self, b: int) -> None:
        """One more reference to block b (a prefix-cache hit or a fork)."""
        if self.ref[b] == 0:
            del self.lru[b]
        self.ref[b] += 1

    def release(self, b: int) -> bool:
        """Drop a reference; True when the block went back to the pool (free or cached)."""
        self.ref[b] -= 1
        if self.ref[b] > 0:
            return False
        if self.key_of[b] is not None:
            self.lru[b] = None
        else:
            self.free.append(b)
        return True

    def register(self, b: int, h: bytes, layer: int) -> None:
        """Make full block b findable under (h, layer); a block already cached under it wins."""
        key = (h, layer)
        if self.enable_prefix_caching and key not in self.table and self.key_of[b] is None:
            self.table[key] = b
            self.key_of[b] = key

    def lookup(self, h: bytes, layer: int) -> int | None:
        return self.table.get((h, layer)) if self.enable_prefix_caching else None

    def copy_block(self, src: int, dst: int) -> None:
        self.k[:, dst].copy_(self.k[:, src])
        self.v[:, dst].copy_(self.v[:, src])

    def gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks `ids` (n,) -> keys, values (nh, n * bs, hs): one index_select each into a reused buffer.

        The views are overwritten by the next gather: use them before gathering again.
        """
        nh, _, bs, hs = self.k.shape
        n = ids.numel() * nh * bs * hs
        if self._buf.numel() < 2 * n:
            self._buf = torch.empty(4 * n, device=self.k.device, dtype=self.k.dtype)   # room to grow
        k = torch.index_select(self.k, 1, ids, out=self._buf[:n].view(nh, ids.numel(), bs, hs))
        v = torch.index_select(self.v, 1, ids, out=self._buf[n:2 * n].view(nh, ids.numel(), bs, hs))
        return k.view(nh, -1, hs), v.view(nh, -1, hs)                  # (nh, n*bs, hs)


@dataclass
class Segment:
    """One sequence's slice of a packed step: tokens start..start+length of a sequence with `tables`."""

    tables: list[list[int]]     # per layer: physical block ids covering positions 0..start+length-1
    start: int
    length: int


class PagedDecode:
    """The model's cache for decode rows only: one new token per sequence, everything a tensor.

    pos (D,) positions of the new tokens; write_at (L, D) the flat slot (block * bs + offset) each one's
    k, v go to; tables (L, D, NB) each row's block table (blocks it does not hold -> the scratch block).
    Heads go as SDPA's batch dim and sequences as its head dim, so the gathered keys need no transpose; the
    mask is the layer's spec over the positions 0..NB*bs-1 the table covers. Nothing here builds a tensor
    from Python values, so the whole step can be compiled (or captured as a CUDA graph) at fixed D and NB.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, write_at: torch.Tensor,
                 tables: torch.Tensor):
        self.k, self.v, self.pos, self.write_at, self.tables = k, v, pos, write_at, tables
        nb, bs = tables.shape[2], k.shape[2]
        self.k_pos = torch.arange(nb * bs, device=pos.device)                            # (NB*bs,)

    def positions(self, T: int) -> torch.Tensor:
        return self.pos[None, :]                                                         # (1, D)

    def advance(self, T: int) -> None:
        pass    # the caller moves each sequence forward after the step

    def attend(self, layer: int, q, k, v, spec) -> torch.Tensor:
        """q, k, v (1, nh, D, hs) -> (1, nh, D, hs), after storing k, v into the rows' blocks."""
        y = self.attend_rows(layer, q[0], k[0], v[0], spec)                              # (nh, D, hs)
        return y[None]

    def attend_rows(self, layer: int, q, k, v, spec) -> torch.Tensor:
        nh, D, hs = q.shape
        flat_k, flat_v = self.k.view(nh, -1, hs), self.v.view(nh, -1, hs)                # (nh, slots, hs)
        flat_k.index_copy_(1, self.write_at[layer], k.to(flat_k.dtype))
        flat_v.index_copy_(1, self.write_at[layer], v.to(flat_v.dtype))
        ids = self.tables[layer].reshape(-1)                                             # (D*NB,)
        keys = self.k.index_select(1, ids).view(nh, D, -1, hs)                           # (nh, D, NB*bs, hs)
        vals = self.v.index_select(1, ids).view(nh, D, -1, hs)
        allowed = spec.allowed(self.pos[:, None], self.k_pos[None, :])                   # (D, NB*bs)
        y = F.scaled_dot_product_attention(q[:, :, None], keys.to(q.dtype), vals.to(q.dtype),
                                           attn_mask=allowed[None, :, None, :])          # (nh, D, 1, hs)
        return y[:, :, 0]


class TableCache:
    """The decode rows' block tables as one (L, D, NB) tensor, rebuilt only when a table changed (a new block
    every block_size tokens, a block given back, another set of rows), not every step."""

    def __init__(self):
        self.key, self.tables = None, None

    def get(self, segs: list[Segment], n_layer: int, nb: int, scratch: int, device) -> torch.Tensor:
        key = (nb, tuple(tuple(t) for s in segs for t in s.tables))
        if key != self.key:
            rows = [[(t[:nb] + [-1] * (nb - len(t))) for s in segs for t in [s.tables[layer]]]
                    for layer in range(n_layer)]
            tables = torch.tensor(rows, device=device)                                   # (L, D, NB)
            self.key, self.tables = key, tables.masked_fill_(tables < 0, scratch)
        return self.tables


def decode_tables(segs: list[Segment], n_layer: int, block_size: int, scratch: int, device, nb: int | None = None,
                  cache: TableCache | None = None):
    """The decode rows' (tables (L, D, NB), write_at (L, D), pos (D,)).

    NB: the longest table (or `nb`, fixed, when a compiled step wants one shape); blocks a row does not
    hold (never taken, or given back outside a band) read the scratch block, which the spec's mask hides.
    """
    bs = block_size
    nb = nb or max(-(-(s.start + 1) // bs) for s in segs)
    tables = (cache or TableCache()).get(segs, n_layer, nb, scratch, device)                # (L, D, NB)
    pos = torch.tensor([s.start for s in segs], device=device)                        # (D,)
    write_at = tables.gather(2, (pos // bs)[None, :, None].expand(n_layer, -1, 1))[..., 0] * bs + pos % bs
    return tables, write_at, pos


class PagedStep:
    """The model's cache for one packed forward pass (1, N): decode segments (length 1) first, then chunks.

    Decode rows attend as one batch (PagedDecode); each longer chunk (prefill) attends alone over its
    blocks, with the mask of the layer's AttentionSpec (gpt3lab/attention_spec.py).
    """

    def __init__(self, pool: BlockPool, segments: list[Segment], tables: TableCache | None = None):
        self.pool, self.segs = pool, segments
        bs, dev, L = pool.block_size, pool.k.device, pool.cfg.n_layer
        self.n_dec = next((i for i, s in enumerate(segments) if s.length != 1), len(segments))
        self.N = sum(s.length for s in segments)
        self.dec = None
        pos, writes = [], []
        if self.n_dec:
            tables, w, p = decode_tables(segments[:self.n_dec], L, bs, pool.scratch, dev, cache=tables)
            self.dec = PagedDecode(pool.k, pool.v, p, w, tables)
            pos.append(p)
            writes.append(w)
        for s in segments[self.n_dec:]:   # tables are per-sequence lists: one tensor each, indexed in torch
            p = torch.arange(s.start, s.start + s.length, device=dev)
            pos.append(p)
            writes.append(torch.tensor(s.tables, device=dev)[:, p // bs] * bs + p % bs)   # (L, length)
        self.pos = pos[0] if len(pos) == 1 else torch.cat(pos)                             # (N,)
        self.write_at = writes[0] if len(writes) == 1 else torch.cat(writes, 1)            # (L, N)

    @property
    def decode_only(self) -> bool:
        return self.n_dec == len(self.segs)

    def positions(self, T: int) -> torch.Tensor:
        return self.pos[None, :]                                                         # (1, N)

    def advance(self, T: int) -> None:
        pass    # the engine moves each sequence forward after the step

    def attend(self, layer: int, q, k, v, spec) -> torch.Tensor:
        """q, k, v (1, nh, N, hs) -> (1, nh, N, hs); stores k, v into the sequences' blocks first."""
        pool, D = self.pool, self.n_dec
        outs = []
        if D:
            outs.append(self.dec.attend_rows(layer, q[0, :, :D], k[0, :, :D], v[0, :, :D], spec))
        if D < self.N:
            nh, _, _, hs = pool.k.shape
            where = self.write_at[layer, D:]
            pool.k.view(nh, -1, hs).index_copy_(1, where, k[0, :, D:].to(pool.k.dtype))   # (nh, N-D, hs) into slots
            pool.v.view(nh, -1, hs).index_copy_(1, where, v[0, :, D:].to(pool.v.dtype))
        at = D
        for s in self.segs[D:]:
            outs.append(self._attend_chunk(layer, s, q[0, :, at:at + s.length], spec))
            at += s.length
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))[None]

    def _attend_chunk(self, layer: int, s: Segment, q, spec) -> torch.Tensor:
        """q (nh, T, hs) of positions start..start+T-1 -> (nh, T, hs), over keys 0..start+T-1."""
        bs, end = self.pool.block_size, s.start + s.length
        lo = spec.first_kept(s.start) // bs                                    # first block the spec reaches
        ids = [b if b >= 0 else self.pool.scratch for b in s.tables[layer][lo:-(-end // bs)]]
        keys, vals = self.pool.gather(torch.tensor(ids, device=q.device))      # (nh, nb*bs, hs)
        k_pos = torch.arange(lo * bs, lo * bs + keys.shape[1], device=q.device)[None, :]
        q_pos = torch.arange(s.start, end, device=q.device)[:, None]
        allowed = spec.allowed(q_pos, k_pos)
        return F.scaled_dot_product_attention(q, keys.to(q.dtype), vals.to(q.dtype), attn_mask=allowed)


__all__ = ["BlockPool", "PagedDecode", "PagedStep", "Segment", "TableCache", "block_hash", "decode_tables",
           "prefix_hashes"]
