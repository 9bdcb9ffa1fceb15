"""The one inference step: packed tokens of several sequences at their positions -> next-token logits.

    core = DecodeCore(model, pool, compile=False)           # pool: paged_cache.BlockPool
    logits = core.forward(segments, ids, rows)              # (R, V) fp32: the rows that sample

Every decoding path runs this step: the engine (`Engine._step`), `generate()`/`stream()` (the engine's
offline entry), inspect's step mode and `compress` (`Session`: one sequence over a pool of its own). So a
token's logits come from the same code whichever entry asked for them.

A step whose rows are all decode rows (one new token each) can run compiled: `compile=True` (or a
torch.compile mode) compiles `decode_step` over tensors only (token ids, positions, write slots, block
tables, the pool): the rows are padded to a power of two and every block table to the context's block
count, so the shapes are fixed and nothing recompiles after the first step of each row bucket. On CPU it
is inductor with freezing (weights folded as constants); on CUDA mode "reduce-overhead" (CUDA graphs, the
pool's storage marked static). Compiled code is cached on disk (TORCHINDUCTOR_CACHE_DIR, by default
~/.cache/gpt3lab/inductor), so a second start skips most of the compile. If compilation fails, one line
on stderr says so and the step runs eagerly. Prefill chunks always run eagerly (their shapes vary).
"""
from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path

import torch

from gpt3lab.attention_spec import AttentionSpec
from gpt3lab.generate.paged_cache import BlockPool, PagedDecode, PagedStep, Segment, TableCache, decode_tables

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def model_specs(model) -> list[AttentionSpec]:
    """The model's per-layer attention specs (what its caches must honour)."""
    return [block.attn.spec for block in model.transformer.h]


def decode_step(model, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor,
                write_at: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """ids, pos (D,), write_at (L, D), tables (L, D, NB) -> logits (D, V): one token per row, k, v stored."""
    x = model.hidden(ids[None], cache=PagedDecode(k, v, pos, write_at, tables))[0]   # (D, d)
    return model.lm_head(x)


def compile_mode(compile, device: torch.device) -> str | None:
    """compile=False/None -> None (eager); True -> "reduce-overhead" on CUDA, "default" elsewhere; or a mode."""
    if not compile:
        return None
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if compile not in COMPILE_MODES:
        from gpt3lab.errors import ConfigError
        raise ConfigError(f"compile={compile!r} is not a torch.compile mode: use True or one of "
                          f"{', '.join(COMPILE_MODES)}")
    return compile


def use_disk_cache() -> None:
    """Keep inductor's compiled kernels across processes (a second start is warm)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt3lab" / "inductor"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default))
    import torch._inductor.config as ic
    ic.fx_graph_cache = True


_COMPILED: dict[tuple[int, str], object] = {}      # (id(model), mode) -> compiled decode_step


def compiled_step(model, mode: str):
    """decode_step compiled for `model` (one per model and mode, shared by every core on it)."""
    key = (id(model), mode)
    if key not in _COMPILED:
        use_disk_cache()
        cpu = model.transformer.wte.weight.device.type == "cpu"
        options = {"freezing": True} if cpu else None
        fn = torch.compile(decode_step, mode=None if mode == "default" else mode, options=options,
                           dynamic=False, fullgraph=False)
        _COMPILED[key] = fn
        weakref.finalize(model, _COMPILED.pop, key, None)
    return _COMPILED[key]


class DecodeCore:
    """The model and its paged KV pool; `forward` runs one packed step, compiled for decode-only steps."""

    def __init__(self, model, pool: BlockPool, compile=None):
        """compile: None follows the model (gpt3lab.load(..., compile=) sets model.compile_mode); False: eager."""
        self.model, self.pool = model, pool
        compile = getattr(model, "compile_mode", None) if compile is None else compile
        self.device = pool.k.device
        self.n_layer = model.config.n_layer
        self.max_blocks = -(-model.config.context // pool.block_size)   # a compiled step's fixed table width
        self.tables = TableCache()                                       # decode tables, kept across steps
        self.mode = compile_mode(compile, self.device)
        self.compiled = compiled_step(model, self.mode) if self.mode else None
        if self.compiled is not None and self.device.type == "cuda":
            torch._dynamo.mark_static_address(pool.k)       # CUDA graphs replay over the same storage
            torch._dynamo.mark_static_address(pool.v)

    def forward(self, segments: list[Segment], ids: list[int], rows: list[int]) -> torch.Tensor:
        """Tokens `ids` of the packed segments (decode rows first) -> logits (R, V) fp32 of positions `rows`."""
        if self.compiled is not None and all(s.length == 1 for s in segments):
            try:
                return self._decode_compiled(segments, ids)[torch.tensor(rows, device=self.device)]
            except Exception as e:      # noqa: BLE001 - any compiler failure: say so once, decode eagerly
                print(f"gpt3lab: compiling the decode step failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                      f"decoding eagerly", file=sys.stderr)
                self.compiled = None
                _COMPILED.pop((id(self.model), self.mode), None)
        step = PagedStep(self.pool, segments, self.tables)
        x = self.model.hidden(torch.tensor([ids], device=self.device), cache=step)[0]     # (N, d) ln_f output
        if len(rows) < len(ids):  # only the rows that sample (or echo) reach the unembedding
            x = x[torch.tensor(rows, dtype=torch.long, device=self.device)]            # (R, d)
        return self.model.lm_head(x).float()                                           # (R, V)

    def _decode_compiled(self, segments: list[Segment], ids: list[int]) -> torch.Tensor:
        """Decode rows padded to a power of two (padding writes to and reads the scratch block) -> (D, V)."""
        D = len(segments)
        Dp = 1 << (D - 1).bit_length()
        pad = Segment([[] for _ in range(self.n_layer)], 0, 1)
        tables, write_at, pos = decode_tables(segments + [pad] * (Dp - D), self.n_layer, self.pool.block_size,
                                              self.pool.scratch, self.device, nb=self.max_blocks, cache=self.tables)
        idt = torch.tensor(ids + [0] * (Dp - D), device=self.device)
        return self.compiled(self.model, self.pool.k, self.pool.v, idt, pos, write_at, tables)[:D].float()


class Session:
    """One growing sequence over a DecodeCore with a pool of its own: compress and inspect's step mode.

        s = Session(model, max_len)
        logits = s.feed(prompt_ids)      # (V,): the next token's logits after them (a prefill chunk)
        logits = s.feed([token])         # one decode step, as the engine runs it
        s.reset()                        # empty again (the blocks go back)
    """

    def __init__(self, model, max_len: int, compile=None, block_size: int = 16):
        self.model = model
        cfg = model.config
        w = model.transformer.wte.weight
        self.max_len = min(max_len, cfg.context)
        n_blocks = cfg.n_layer * -(-self.max_len // block_size)
        self.pool = BlockPool(cfg, n_blocks, block_size, w.device, w.dtype, enable_prefix_caching=False)
        self.core = DecodeCore(model, self.pool, compile)
        self.tables: list[list[int]] = [[] for _ in range(cfg.n_layer)]
        self.length = 0

    def feed(self, tokens: list[int]) -> torch.Tensor:
        """Append `tokens`; -> logits (V,) fp32 of the token after them."""
        from gpt3lab.errors import ContextOverflowError
        end = self.length + len(tokens)
        if end > self.max_len:
            raise ContextOverflowError(f"{self.length} cached + {len(tokens)} new tokens exceed the session's "
                                       f"length {self.max_len}; reset it first")
        for t in self.tables:
            while len(t) * self.pool.block_size < end:
                t.append(self.pool.allocate())
        seg = Segment(self.tables, self.length, len(tokens))
        logits = self.core.forward([seg], list(tokens), [len(tokens) - 1])                 # (1, V)
        self.length = end
        return logits[0]

    def reset(self) -> None:
        for t in self.tables:
            for b in t:
                self.pool.release(b)
            t.clear()
        self.length = 0


__all__ = ["COMPILE_MODES", "DecodeCore", "Session", "compile_mode", "decode_step", "model_specs"]
