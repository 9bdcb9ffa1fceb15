"""Parameter, FLOP, memory, GPU-time and cost arithmetic for a GPT (`gpt3lab size`).

Pure arithmetic on a ModelConfig: no torch, no model is built. Conventions (also in docs/ARCHITECTURE.md):

- Parameters are counted exactly as `GPT(cfg)` holds them: wte, wpe, per block ln_1, c_attn, c_proj, ln_2,
  c_fc, c_proj, then ln_f; the unembedding is tied to wte and counted once.
- Training FLOPs = 6·N·D (the paper's own count, Appendix D: 2 FLOPs per parameter per token forward,
  4 backward, N = all parameters) + an attention term the 6·N·D count leaves out:
  3 x 4 · d_attn · k̄ per layer per token, where k̄ is the mean number of keys a query actually attends to
  (causal: (T+1)/2 for a dense layer, about the window w for a banded one). The 4 = two matmuls (QKᵀ, AV)
  x 2 FLOPs per multiply-add; the 3 = forward + backward. This is Kaplan et al. 2020's 2·n_layer·n_ctx·d_attn
  forward term with the band taken into account. It counts useful work only: kernels that compute masked
  blocks do more.
- Memory assumes bf16 autocast mixed precision with fp32 master weights, AdamW: 4 B weights + 4 B grads +
  8 B Adam m and v = 16 bytes/param. DDP replicates all 16 B on every GPU; FSDP (full shard, ZeRO-3) splits
  them over the world size (the transient all-gathered layer is not counted). Activations: see
  `layer_activation_bytes`.
- Tensor parallelism over K GPUs (train.tensor_parallel, with FSDP over world / K): the block matrices
  (c_attn, c_fc column-wise, both c_proj row-wise) and column-parallel biases are split K ways and FSDP
  splits them further over world / K; embeddings, LayerNorms and row-parallel biases are whole on each TP
  rank and FSDP-split over world / K only. Activations inside attention and the MLP (q, k, v, the attention
  output, the d_ff hidden) are split K ways; the residual stream, LayerNorm inputs and the logits are not
  (no sequence parallelism).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gpt3lab.config import ModelConfig
from gpt3lab.attention_spec import layer_specs
from gpt3lab.errors import ConfigError

HOURS_PER_YEAR = 365 * 24          # Lambda's 355 GPU-years uses 365-day years
BYTES_WEIGHTS = 4                  # fp32 master weights (autocast casts to bf16 on the fly)
BYTES_GRADS = 4                    # fp32 gradients (same dtype as the weights they belong to)
BYTES_ADAM = 8                     # fp32 exp_avg + exp_avg_sq
BYTES_PER_PARAM = BYTES_WEIGHTS + BYTES_GRADS + BYTES_ADAM   # = 16


@dataclass(frozen=True)
class GPU:
    """An accelerator: dense 16-bit tensor peak, memory, and an illustrative on-demand price."""
    name: str
    peak_flops: float        # FLOP/s, dense (no sparsity), fp16/bf16 tensor cores
    memory_gb: float         # GB = 1e9 bytes
    price_per_hour: float    # USD; round illustrative numbers, pass --price-per-hour for a real quote
    label: str


GPUS: dict[str, GPU] = {
    "v100": GPU("v100", 125e12, 32, 1.50, "V100 SXM2 32GB, fp16 tensor"),
    "a100": GPU("a100", 312e12, 80, 2.00, "A100 SXM 80GB, bf16 tensor"),
    "h100": GPU("h100", 989e12, 80, 3.00, "H100 SXM 80GB, bf16 tensor dense"),
    "h200": GPU("h200", 989e12, 141, 3.50, "H200 SXM 141GB, bf16 tensor dense"),
}


def get_gpu(name: str) -> GPU:
    """Look up a GPU by name (case-insensitive); ConfigError lists the known ones."""
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)}") from None


# ---------------------------------------------------------------------------------------------
# parameters


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter count by part: wte, wpe, attention, mlp, norms, total (lm_head tied to wte)."""
    d, da, f, L = cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.n_layer
    b = 1 if cfg.bias else 0
    attn = (d * 3 * da + b * 3 * da) + (da * d + b * d)       # c_attn + c_proj
    mlp = (d * f + b * f) + (f * d + b * d)                    # c_fc + c_proj
    ln = d + b * d                                             # LayerNorm weight (+ bias)
    counts = {
        "wte": cfg.vocab_size * d,
        "wpe": cfg.context * d,
        "attention": L * attn,
        "mlp": L * mlp,
        "norms": (2 * L + 1) * ln,
    }
    counts["total"] = sum(counts.values())
    return counts


def n_params(cfg: ModelConfig) -> int:
    """Total parameters, = sum(p.numel() for p in GPT(cfg).parameters())."""
    return param_counts(cfg)["total"]


# ---------------------------------------------------------------------------------------------
# FLOPs


def mean_attended_keys(seq_len: int, window: int | None = None) -> float:
    """Mean keys per query under a causal mask over `seq_len` tokens (optionally a band of `window`)."""
    w = seq_len if window is None else min(window, seq_len)
    # query t (0-based) sees min(t + 1, w) keys: 1..w for the first w queries, then w each
    total = w * (w + 1) // 2 + (seq_len - w) * w
    return total / seq_len


def attention_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward FLOPs per token of QKᵀ and AV over all layers (the part 2N leaves out)."""
    T = cfg.context if seq_len is None else seq_len
    keys = sum(mean_attended_keys(T, spec.window) for spec in layer_specs(cfg))
    return 4.0 * cfg.d_attn * keys


def training_flops(cfg: ModelConfig, tokens: float) -> dict[str, float]:
    """Training FLOPs on `tokens` tokens of full-context sequences: 6ND, attention term, total."""
    six_nd = 6.0 * n_params(cfg) * tokens
    attn = 3.0 * attention_flops_per_token(cfg) * tokens
    return {"6ND": six_nd, "attention": attn, "total": six_nd + attn}


def inference_flops_per_token(cfg: ModelConfig) -> float:
    """Forward FLOPs per generated token with a KV cache, averaged over a full context: 2N + attention."""
    return 2.0 * n_params(cfg) + attention_flops_per_token(cfg)


# ---------------------------------------------------------------------------------------------
# memory


def layer_activation_bytes(cfg: ModelConfig, banded: bool, tp: int = 1) -> float:
    """Bytes one block saves for backward, per token, under bf16 autocast with fused (SDPA) attention.

    The residual stream and LayerNorm run in fp32 (4 B); matmul inputs/outputs are bf16 (2 B):
    ln_1 input 4h + mean/rstd 8, c_attn input 2h, q/k/v 6a, SDPA output 2a (which c_proj's input shares:
    the kernel writes (B, T, nh, hs), so transpose + contiguous copies nothing) + its fp32 log-sum-exp
    4·n_head, ln_2 input 4h + 8, c_fc input 2h, GELU input 2f, mlp c_proj input 2f. A banded layer also
    keeps its blocked keys/values ([prev | own] block: 2 copies of k and v, +8a). No T x T scores are
    kept (fused kernels recompute them); dropout > 0 adds 1-byte residual dropout masks.
    Checked against the tensors autograd saves in tests/test_sizing.py.
    tp: tensor-parallel ranks; the head- and d_ff-sized tensors are split over them, the rest is not.
    """
    h, a, f = cfg.d_model, cfg.d_attn, cfg.d_ff
    whole = 12 * h + 16 + (2 * h if cfg.dropout > 0 else 0)    # + residual dropout masks (attention, MLP)
    split = 8 * a + 4 * cfg.n_head + 4 * f + (8 * a if banded else 0)
    return whole + (split if tp == 1 else split / tp)


def head_activation_bytes(cfg: ModelConfig) -> int:
    """Per-token bytes saved outside the blocks: ln_f input (fp32) + stats, lm_head input (bf16),
    the fp32 log-softmax of the logits, and the int64 targets."""
    return 4 * cfg.d_model + 8 + 2 * cfg.d_model + 4 * cfg.vocab_size + 8


def activation_bytes(cfg: ModelConfig, micro_batch: int = 1, checkpointing: bool = False, tp: int = 1) -> float:
    """Peak activation memory for one micro-batch of `micro_batch` full-context sequences.

    Without checkpointing every block's saved tensors are alive at the start of backward. With per-block
    checkpointing only each block's fp32 input (4h per token) is kept, plus one block's full set while
    that block is recomputed during backward.
    """
    tokens = micro_batch * cfg.context
    per_layer = [layer_activation_bytes(cfg, spec.kernel == "banded", tp) for spec in layer_specs(cfg)]
    if checkpointing:
        blocks = cfg.n_layer * 4 * cfg.d_model + max(per_layer)
    else:
        blocks = sum(per_layer)
    return tokens * (blocks + head_activation_bytes(cfg))


def state_bytes(cfg: ModelConfig, world_size: int = 1, parallel: str = "ddp") -> dict[str, float]:
    """Per-GPU bytes of weights / grads / Adam states (16 B/param); FSDP divides them by world_size."""
    if parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"parallel={parallel!r} must be ddp or fsdp")
    n = n_params(cfg)
    shards = world_size if parallel == "fsdp" else 1
    out = {"weights": n * BYTES_WEIGHTS / shards, "grads": n * BYTES_GRADS / shards,
           "adam": n * BYTES_ADAM / shards}
    out["total"] = out["weights"] + out["grads"] + out["adam"]
    return out


def tp_split_params(cfg: ModelConfig) -> int:
    """Parameters tensor parallelism splits: the block matrices and the column-parallel biases."""
    d, da, f, b = cfg.d_model, cfg.d_attn, cfg.d_ff, 1 if cfg.bias else 0
    return cfg.n_layer * (d * 3 * da + b * 3 * da + da * d + d * f + b * f + f * d)


def tp_state_bytes(cfg: ModelConfig, world_size: int, tp: int) -> dict[str, float]:
    """Per-GPU states under FSDP over world_size / tp x tensor parallelism over tp."""
    if tp < 1 or world_size % tp:
        raise ConfigError(f"tensor parallel size {tp} must divide the world size {world_size}")
    split = tp_split_params(cfg)
    per_gpu = split / world_size + (n_params(cfg) - split) / (world_size // tp)
    out = {"weights": per_gpu * BYTES_WEIGHTS, "grads": per_gpu * BYTES_GRADS, "adam": per_gpu * BYTES_ADAM}
    out["total"] = out["weights"] + out["grads"] + out["adam"]
    return out


def tp_layouts(cfg: ModelConfig, world_size: int) -> list[int]:
    """Tensor-parallel sizes worth reporting: 2, 4, 8 where they divide world size, heads and d_ff."""
    return [k for k in (2, 4, 8) if world_size % k == 0 and cfg.n_head % k == 0 and cfg.d_ff % k == 0]


def memory_per_gpu(cfg: ModelConfig, world_size: int = 1, parallel: str = "ddp",
                   micro_batch: int = 1, tp: int = 1) -> dict[str, float]:
    """Per-GPU bytes: states (weights, grads, adam) + activations, with and without checkpointing.

    tp > 1: FSDP over world_size / tp x tensor parallelism over tp (parallel must be fsdp)."""
    if tp > 1 and parallel != "fsdp":
        raise ConfigError(f"tensor parallelism (tp={tp}) runs with parallel=fsdp, not {parallel!r}")
    states = tp_state_bytes(cfg, world_size, tp) if tp > 1 else state_bytes(cfg, world_size, parallel)
    act = activation_bytes(cfg, micro_batch, checkpointing=False, tp=tp)
    act_ckpt = activation_bytes(cfg, micro_batch, checkpointing=True, tp=tp)
    return {**{k: v for k, v in states.items() if k != "total"}, "states": states["total"],
            "activations": act, "activations_ckpt": act_ckpt,
            "total": states["total"] + act, "total_ckpt": states["total"] + act_ckpt}


# ---------------------------------------------------------------------------------------------
# time and cost


def gpu_time(flops: float, gpu: GPU, mfu: float, price_per_hour: float | None = None,
             world_size: int = 1) -> dict[str, float]:
    """GPU-hours/years, wall-clock days on `world_size` GPUs and cost, at `mfu` of the GPU's peak."""
    _check_positive("mfu", mfu)
    if mfu > 1:
        raise ConfigError(f"mfu={mfu} must be in (0, 1]: it is the fraction of the GPU's peak achieved")
    price = gpu.price_per_hour if price_per_hour is None else price_per_hour
    if price < 0:
        raise ConfigError(f"price per hour={price} must be >= 0")
    hours = flops / (gpu.peak_flops * mfu) / 3600
    return {"sustained_flops": gpu.peak_flops * mfu, "gpu_hours": hours,
            "gpu_years": hours / HOURS_PER_YEAR, "wall_days": hours / world_size / 24,
            "price_per_hour": price, "cost_usd": hours * price}


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value!r} must be a positive finite number")


# ---------------------------------------------------------------------------------------------
# the often-quoted "355 GPU-years / $4.6M" for GPT-3 175B (Lambda Labs, 2020)

PAPER_175B_FLOPS = 3.14e23     # Brown et al. 2020, Table D.1: 6 x 174.6B params x 300B tokens
LAMBDA_V100_FLOPS = 28e12      # Lambda's assumed sustained V100 throughput (of 125 TFLOP/s fp16 peak)
LAMBDA_PRICE = 1.50            # USD per V100-hour, Lambda's cheapest cloud instance at the time


def lambda_estimate(flops: float = PAPER_175B_FLOPS) -> dict[str, float]:
    """Reproduce Lambda Labs' 2020 estimate: `flops` at 28 TFLOP/s per V100 and $1.50 per V100-hour."""
    t = gpu_time(flops, GPUS["v100"], LAMBDA_V100_FLOPS / GPUS["v100"].peak_flops, LAMBDA_PRICE)
    return {"flops": flops, "sustained_flops": LAMBDA_V100_FLOPS, "mfu": t["sustained_flops"] / 125e12,
            "gpu_hours": t["gpu_hours"], "gpu_years": t["gpu_years"], "cost_usd": t["cost_usd"]}


def lambda_explanation() -> str:
    """The 355 GPU-years / $4.6M figures, derived step by step from their assumptions."""
    e = lambda_estimate()
    return (f"GPT-3 175B, the often-quoted \"355 GPU-years / $4.6M\" (Lambda Labs, 2020):\n"
            f"  training compute  {e['flops']:.3g} FLOPs (paper, Table D.1: 6 x 174.6e9 params x 300e9 tokens)\n"
            f"  one V100 at an assumed {e['sustained_flops'] / 1e12:.0f} TFLOP/s sustained "
            f"({e['mfu']:.1%} of its 125 TFLOP/s fp16 tensor peak)\n"
            f"  {e['flops']:.3g} / {e['sustained_flops']:.3g} FLOP/s = {e['gpu_hours'] * 3600:.3g} s "
            f"= {e['gpu_hours']:,.0f} V100-hours = {e['gpu_years']:.1f} V100-years (365-day years)\n"
            f"  x ${LAMBDA_PRICE:.2f}/V100-hour = ${e['cost_usd'] / 1e6:.2f}M (quoted as $4.6M)\n"
            f"  It is single-GPU-equivalent time and a lower bound on cost: no failed runs, no idle "
            f"GPUs, no\n  attention FLOPs (6ND only), and a V100 MFU of 22% that large runs rarely kept.")


# ---------------------------------------------------------------------------------------------
# one report


def size_report(cfg: ModelConfig, *, name: str = "custom", tokens: float = 300e9, gpu: str = "h100",
                mfu: float = 0.4, price_per_hour: float | None = None, world_size: int = 8,
                batch_tokens: int | None = None, micro_batch: int = 1,
                paper_params: float | None = None) -> dict:
    """Everything `gpt3lab size` prints, as a JSON-safe dict."""
    _check_positive("tokens", tokens)
    for key, v in (("world_size", world_size), ("micro_batch", micro_batch)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{key}={v!r} must be a positive integer")
    if batch_tokens is not None:
        _check_positive("batch_tokens", batch_tokens)
    g = get_gpu(gpu)
    params = param_counts(cfg)
    flops = training_flops(cfg, tokens)
    report = {
        "name": name,
        "config": {k: getattr(cfg, k) for k in ("vocab_size", "context", "n_layer", "n_head", "d_model",
                                                "d_head", "d_attn", "d_ff", "attention_pattern",
                                                "local_window", "bias")},
        "params": params,
        "paper_params": paper_params,
        "tokens": tokens,
        "batch_tokens": batch_tokens,
        "steps": math.ceil(tokens / batch_tokens) if batch_tokens else None,
        "train_flops": flops,
        "inference_flops_per_token": inference_flops_per_token(cfg),
        "gpu": {"name": g.name, "label": g.label, "peak_flops": g.peak_flops, "memory_gb": g.memory_gb},
        "mfu": mfu,
        "world_size": world_size,
        "micro_batch": micro_batch,
        "memory": {p: memory_per_gpu(cfg, world_size, p, micro_batch) for p in ("ddp", "fsdp")},
        "memory_tp": {f"fsdp{world_size // k}xtp{k}": memory_per_gpu(cfg, world_size, "fsdp", micro_batch, k)
                      for k in tp_layouts(cfg, world_size)},
        "time": gpu_time(flops["total"], g, mfu, price_per_hour, world_size),
        "assumptions": ASSUMPTIONS,
    }
    return report


ASSUMPTIONS = [
    "train FLOPs = 6*N*D (N = all params, as the paper) + attention 12*d_attn*mean_keys per layer per token; "
    "banded layers attend to at most local_window keys",
    "states: bf16 autocast, fp32 master weights 4 B + fp32 grads 4 B + fp32 Adam m,v 8 B = 16 B/param; "
    "DDP replicates them, FSDP (full shard) divides them by world_size; fsdpDxtpK: FSDP over D x tensor "
    "parallel over K, block matrices split D*K ways, embeddings/norms D ways, attention/MLP activations K ways",
    "activations: one micro-batch of full-context sequences, fp32 residual/LayerNorm inputs, bf16 matmul "
    "inputs, fused attention (no TxT scores); checkpointing keeps each block's input + one block",
    "GPU time = FLOPs / (peak * mfu); GPU-years of 365 days; cost = GPU-hours * price",
]
