"""Parallelism applied from outside the model: FSDP2 over one dimension of a 2-D device mesh, Megatron-style
tensor parallelism (torch DTensor `parallelize_module`) over the other.

    mesh (dp, tp) = init_device_mesh(..., (world / K, K)); tp is the inner dimension, so a TP group is K
    consecutive ranks (one node's GPUs under torchrun)

Per block, TP shards the two matrix pairs so that one all-reduce per pair suffices (Megatron-LM):
c_attn (q, k, v) and c_fc column-wise (each rank computes its own heads / its slice of the 4d hidden layer),
attn.c_proj and mlp.c_proj row-wise (partial sums all-reduced). LayerNorms, embeddings and the tied
unembedding are replicated over tp (`Replicated`), so every parameter is a DTensor on the same mesh and the
gradient norm is one reduction. Attention itself (dense or banded) runs unchanged on the local heads.
Sequence parallelism is not applied: it only saves the replicated LayerNorm/dropout activations (a few % of
a block's) at the price of extra collectives, which does not pay on the gloo/CPU setups tested here.

The fused c_attn is first split into q, k and v projections (`split_qkv`): a column shard of the fused
(3d, d) matrix would give rank 0 all of q and half of k. FSDP-only runs split it too, so every parallel
layout has the same parameter names and a sharded checkpoint reshards between any of them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor, Replicate, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from gpt3lab.errors import ConfigError

QKV_NAMES = ("q", "k", "v")


class QKV(nn.Module):
    """c_attn as three projections; returns what the fused layer returns, [q | k | v] on the last dim
    (under TP: this rank's heads of each, which the attention reshapes with -1 heads)."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        d_in, d = fused.in_features, fused.out_features // 3
        for name, w, b in zip(QKV_NAMES, fused.weight.detach().chunk(3),
                              (fused.bias.detach().chunk(3) if fused.bias is not None else (None,) * 3)):
            lin = nn.Linear(d_in, d, bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            setattr(self, name, lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)          # (B, T, 3 * d_local)


def split_qkv(model: nn.Module) -> None:
    """Replace every block's fused attn.c_attn by a `QKV` (in place; a no-op when already split)."""
    for block in model.transformer.h:
        if isinstance(block.attn.c_attn, nn.Linear):
            block.attn.c_attn = QKV(block.attn.c_attn)


def split_qkv_state(sd: dict) -> dict:
    """A state dict of the fused model keyed like the split one: `...attn.c_attn.weight` becomes
    `...attn.c_attn.{q,k,v}.weight`, as row views (no copy: loading into them fills the fused tensor).

    Values may be tensors or per-parameter dicts (optimizer state: exp_avg etc. split, scalars shared)."""
    out = {}
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if not prefix.endswith("attn.c_attn"):
            out[key] = value
            continue
        for i, name in enumerate(QKV_NAMES):
            out[f"{prefix}.{name}.{leaf}"] = _third(value, i)
    return out


def _third(value, i: int):
    if isinstance(value, dict):
        return {k: _third(v, i) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.chunk(3)[i]
    return value


class Replicated(ParallelStyle):
    """A ParallelStyle for modules kept whole on every TP rank (LayerNorm, embeddings, lm_head): their
    parameters become Replicate DTensors on the tp mesh, their inputs and outputs stay plain tensors."""

    def _apply(self, module: nn.Module, mesh) -> nn.Module:
        return distribute_module(module, mesh, _replicate_params, _inputs_to_dtensor, _outputs_to_local)


def _replicate_params(name, module, mesh):
    for pname, p in list(module.named_parameters(recurse=False)):
        if not isinstance(p, DTensor):            # the tied lm_head weight is wte's, already distributed
            module.register_parameter(pname, nn.Parameter(distribute_tensor(p.data, mesh, [Replicate()]),
                                                          requires_grad=p.requires_grad))


def _inputs_to_dtensor(module, inputs, mesh):
    return tuple(DTensor.from_local(t, mesh, [Replicate()], run_check=False)
                 if isinstance(t, torch.Tensor) and not isinstance(t, DTensor) else t for t in inputs)


def _outputs_to_local(module, output, mesh):
    return output.to_local() if hasattr(output, "to_local") else output


def apply_tp(model: nn.Module, tp_mesh) -> None:
    """Megatron sharding of every block over `tp_mesh` (heads and d_ff must divide by its size)."""
    k, cfg = tp_mesh.size(), model.config
    if cfg.n_head % k or cfg.d_ff % k:
        raise ConfigError(f"train.tensor_parallel={k} must divide model.n_head={cfg.n_head} and "
                          f"model.d_ff={cfg.d_ff}; pick a divisor of both")
    plan = {f"attn.c_attn.{n}": ColwiseParallel() for n in QKV_NAMES}
    plan.update({"attn.c_proj": RowwiseParallel(), "mlp.c_fc": ColwiseParallel(),
                 "mlp.c_proj": RowwiseParallel(), "ln_1": Replicated(), "ln_2": Replicated()})
    for block in model.transformer.h:
        parallelize_module(block, tp_mesh, plan)
    parallelize_module(model, tp_mesh, {"transformer.wte": Replicated(), "transformer.wpe": Replicated(),
                                        "transformer.ln_f": Replicated()})
    model.lm_head.weight = model.transformer.wte.weight                 # re-tie to the distributed embedding
    parallelize_module(model, tp_mesh, {"lm_head": Replicated()})


def apply_fsdp(model: nn.Module, dp_mesh, precision: str = "fp32") -> None:
    """FSDP2 over `dp_mesh`: each block one unit, the root (embeddings, ln_f) another. Under bf16 the
    gathered parameters are bf16 and gradients are reduced in fp32; shards and optimizer stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if precision == "bf16" else MixedPrecisionPolicy())
    for block in model.transformer.h:
        fully_shard(block, mesh=dp_mesh, mp_policy=mp)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp)


def make_mesh(device: torch.device, world_size: int, tensor_parallel: int):
    """The (dp, tp) mesh: tp consecutive ranks per TP group."""
    from torch.distributed.device_mesh import init_device_mesh

    if world_size % tensor_parallel:
        raise ConfigError(f"train.tensor_parallel={tensor_parallel} must divide the number of processes "
                          f"({world_size})")
    return init_device_mesh(device.type, (world_size // tensor_parallel, tensor_parallel),
                            mesh_dim_names=("dp", "tp"))


def parallelize(model: nn.Module, mesh, precision: str = "fp32") -> nn.Module:
    """Split c_attn, shard blocks over mesh['tp'] when it has more than one rank, then FSDP over mesh['dp']."""
    split_qkv(model)
    if mesh["tp"].size() > 1:
        apply_tp(model, mesh["tp"])
    apply_fsdp(model, mesh["dp"], precision)
    return model
