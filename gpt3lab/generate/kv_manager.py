"""KV block accounting for the engine: reservations, prefix matching, allocation and return of blocks.

A request is admitted only with its worst-case blocks reserved (`reserved` counts blocks promised to
running requests and not yet taken), so decoding never runs out of cache. Invariants, tested directly:
`reserved` >= 0 and equals the sum of the running requests' budgets; a request's blocks all go back to
the pool (free or cached) when it finishes, is cancelled or fails.

Sequences are the scheduler's `Seq` (tables, tokens, computed, hashes, req.budget); the pool is a
paged_cache.BlockPool.
"""
from __future__ import annotations

from gpt3lab.attention_spec import AttentionSpec, layer_specs
from gpt3lab.config import ModelConfig
from gpt3lab.generate.paged_cache import BlockPool, block_hash, prefix_hashes


class KVManager:
    """Reservations and block tables over one BlockPool."""

    def __init__(self, pool: BlockPool, mcfg: ModelConfig, max_batch_tokens: int, prefix_caching: bool = True,
                 specs: list[AttentionSpec] | None = None):
        """specs: the model's per-layer attention specs (which blocks a layer may give back); cfg's by default."""
        self.pool, self.mcfg = pool, mcfg
        self.specs = specs or layer_specs(mcfg)
        self.block_size, self.max_batch_tokens = pool.block_size, max_batch_tokens
        self.prefix_caching = prefix_caching
        self.reserved = 0                 # blocks promised to running requests, not yet taken

    def blocks_per_seq(self, total: int) -> int:
        """Most blocks one sequence of `total` tokens holds at once (a layer with a horizon keeps only its window
        plus the chunk being prefilled)."""
        return self.blocks_for(self.specs, self.block_size, self.max_batch_tokens, total)

    @staticmethod
    def blocks_for(specs: list[AttentionSpec], block_size: int, max_batch_tokens: int, total: int) -> int:
        bs, C = block_size, max_batch_tokens
        full = -(-total // bs)
        return sum(full if spec.window is None else min(full, (spec.window + C) // bs + 2) for spec in specs)

    def blocks_needed(self, req) -> int:
        """Worst-case blocks of a request: every choice at its full length."""
        # a sliding window (params.sliding_window) never holds more than the context
        return req.best_of * self.blocks_per_seq(min(len(req.prompt) + req.params.max_tokens, self.mcfg.context))

    def reserve(self, req):
        """Reserve `req`'s worst case, reusing its cached prefix; -> (P, tables, hashes) or None if it does not fit.

        P = prompt tokens already in the cache; tables = per-layer block tables holding them.
        """
        P, tables, hashes, hits = self.match_prefix(req.prompt, req.params.echo)
        evictable = sum(1 for b in hits if self.pool.ref[b] == 0)
        budget = self.blocks_needed(req) - len(hits)
        if self.pool.available() - evictable < self.reserved + budget:
            return None
        for b in hits:
            self.pool.acquire(b)
        req.budget, self.reserved = budget, self.reserved + budget
        return P, tables, hashes

    def match_prefix(self, prompt: list[int], echo: bool = False):
        """Longest cached prefix of the prompt (whole blocks, at least one prompt token left to run).

        -> (cached tokens P, per-layer tables, block hashes, hit block ids). A layer with a horizon needs only
        the blocks its spec still reaches from position P. Echo needs every prompt logit: no reuse.
        """
        L, bs, specs = self.mcfg.n_layer, self.block_size, self.specs
        if echo or not self.prefix_caching:
            return 0, [[] for _ in range(L)], [], []
        hashes = prefix_hashes(prompt[:-1], bs)
        m = 0
        while m < len(hashes) and all(self.pool.lookup(hashes[m], l) is not None
                                      for l in range(L) if specs[l].window is None):
            m += 1
        while m and not all(self.pool.lookup(hashes[j], l) is not None
                            for l in range(L) if specs[l].window is not None
                            for j in range(self.first_block(l, m * bs), m)):
            m -= 1
        tables, hits = [], []
        for l in range(L):
            lo = self.first_block(l, m * bs)
            tables.append([self.pool.lookup(hashes[j], l) if j >= lo else -1 for j in range(m)])
            hits += [b for b in tables[-1] if b >= 0]
        return m * bs, tables, hashes[:m], hits

    def first_block(self, layer: int, pos: int) -> int:
        """First block of `layer` that a query at `pos` or later still reaches (its spec's horizon)."""
        return self.specs[layer].first_kept(pos) // self.block_size

    def alloc(self, req) -> int:
        """A new block for `req`, taken from its reservation."""
        if req.budget > 0:
            req.budget -= 1
            self.reserved -= 1
        elif self.pool.available() <= self.reserved:
            raise RuntimeError("KV block reservation exceeded (engine bug)")
        return self.pool.allocate()

    def give_back(self, req, b: int) -> None:
        """Drop `req`'s reference to block b; a block back in the pool returns to the request's reservation."""
        if self.pool.release(b):
            req.budget += 1
            self.reserved += 1

    def ensure_blocks(self, s, upto: int) -> None:
        """Allocate blocks so every layer's table covers positions 0..upto-1."""
        for t in s.tables:
            while len(t) * self.block_size < upto:
                t.append(self.alloc(s.req))

    def register_blocks(self, s) -> None:
        """Blocks that just became full become findable by the hash of all tokens up to their end."""
        if not self.prefix_caching:
            return
        bs = self.block_size
        while len(s.hashes) < s.computed // bs:
            j = len(s.hashes)
            h = block_hash(s.hashes[-1] if s.hashes else b"", s.tokens[j * bs:(j + 1) * bs])
            s.hashes.append(h)
            for layer, t in enumerate(s.tables):
                if t[j] >= 0:
                    self.pool.register(t[j], h, layer)

    def free_outside_window(self, s) -> None:
        """Layers with a horizon: give back blocks no future query of this sequence can see."""
        for layer, t in enumerate(s.tables):
            for j in range(min(self.first_block(layer, s.computed), len(t))):
                if t[j] >= 0:
                    self.give_back(s.req, t[j])
                    t[j] = -1

    def share(self, req, table: list[int], n_tokens: int) -> list[int]:
        """A fork's copy of `table`: full blocks shared by reference, the partial last one copied."""
        full = n_tokens // self.block_size
        out = []
        for j, b in enumerate(table):
            if b >= 0 and j < full:
                self.pool.acquire(b)
            elif b >= 0:                                 # the partial block: written to by each choice
                nb = self.alloc(req)
                self.pool.copy_block(b, nb)
                b = nb
            out.append(b)
        return out

    def release_seq(self, s) -> None:
        for t in s.tables:
            for b in t:
                if b >= 0:
                    self.give_back(s.req, b)
            t.clear()

    def release_request(self, req) -> None:
        """Every block of every choice back to the pool, and the rest of the reservation cancelled."""
        for s in req.seqs:
            self.release_seq(s)
        self.reserved -= req.budget
        req.budget = 0


__all__ = ["KVManager"]
