"""Refuse a training run that cannot fit: the `gpt3lab size` estimate of one process's memory (weights,
grads, Adam states and the activations of one micro-batch) against the memory of the device it runs on.

A typo such as `--set model.context=100000000` or `train.batch_size=1e20` used to be accepted and then
grew until the OOM killer came (or failed deep inside numpy); it is one line naming both numbers now.
The estimate is a lower bound for CPU runs (it assumes bf16 activations), so a run refused here would not
have fitted either.
"""
from __future__ import annotations

import os

import torch

from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.errors import ConfigError


def device_memory(device: torch.device) -> tuple[int, str]:
    """(bytes one process may use, what they are): a CUDA device's memory, else this machine's RAM shared
    by the processes torchrun started on it."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{device} memory"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return ram // procs, "this machine's memory" + (f" / {procs} local processes" if procs > 1 else "")


def training_bytes(mcfg: ModelConfig, tcfg: TrainConfig, dp_world: int, frozen: bool = False) -> float:
    """`gpt3lab size`'s per-process estimate for this run (sizing.memory_per_gpu); frozen: the weights are
    not trained (LoRA: their grads and Adam states do not exist; the adapters' are negligible)."""
    from gpt3lab.sizing import memory_per_gpu

    fsdp = tcfg.parallel == "fsdp"
    tp = tcfg.tensor_parallel if fsdp else 1
    m = memory_per_gpu(mcfg, world_size=dp_world * tp, parallel="fsdp" if fsdp else "ddp",
                       micro_batch=tcfg.batch_size, tp=tp)
    states = m["weights"] if frozen else m["states"]
    return states + (m["activations_ckpt"] if tcfg.activation_checkpointing else m["activations"])


def check_fits(mcfg: ModelConfig, tcfg: TrainConfig, dp_world: int, device: torch.device,
               frozen: bool = False) -> None:
    """ConfigError naming the estimate and the memory when the run cannot fit on `device`."""
    need = training_bytes(mcfg, tcfg, dp_world, frozen)
    have, what = device_memory(device)
    if need > have:
        raise ConfigError(
            f"this run needs an estimated {_gb(need)} per process (gpt3lab size: weights, grads, Adam states and "
            f"the activations of batch_size {tcfg.batch_size} x context {mcfg.context} with model.n_layer="
            f"{mcfg.n_layer}, d_model={mcfg.d_model}) but {what} is {_gb(have)}; lower model.context, the "
            f"model size or train.batch_size, or set train.activation_checkpointing=true")


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 1e15 else f"{n:.2e} bytes"
