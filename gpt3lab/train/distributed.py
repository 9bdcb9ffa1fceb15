"""The one seam between the training loop and multi-process training.

The loop only calls the methods of `Distributed`; the single-process version below is rank 0 of 1.
`from_env()` returns a DDP version when launched by torchrun (WORLD_SIZE > 1 and train.parallel=ddp).
"""
from __future__ import annotations

import contextlib
import os

import torch


class Distributed:
    """Single process: rank 0 of 1. Subclasses override what changes with several processes."""

    rank, world_size = 0, 1

    @property
    def is_main(self) -> bool:
        """Only the main process logs, evaluates for the log and writes checkpoints."""
        return self.rank == 0

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def no_sync(self, model: torch.nn.Module, final_micro_step: bool):
        """Context for a micro-step's backward: skip gradient all-reduce except on the last one."""
        return contextlib.nullcontext()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class DDP(Distributed):
    """torch.distributed DistributedDataParallel (one process per device, launched by torchrun)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        self.dist, self.device = dist, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def wrap_model(self, model):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model, final_micro_step):
        return contextlib.nullcontext() if final_micro_step else model.no_sync()

    def all_reduce_mean(self, value):
        value = value.detach().clone()
        self.dist.all_reduce(value, op=self.dist.ReduceOp.AVG if self.device.type == "cuda"
                             else self.dist.ReduceOp.SUM)
        return value if self.device.type == "cuda" else value / self.world_size

    def barrier(self):
        self.dist.barrier()

    def close(self):
        self.dist.destroy_process_group()


def local_device(requested: str) -> torch.device:
    """'auto' -> cuda:LOCAL_RANK when CUDA exists, else cpu; anything else as given."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(requested)


def from_env(parallel: str, device: torch.device) -> Distributed:
    """The Distributed for this process: DDP under torchrun with parallel=ddp, else single-process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if parallel == "ddp":
            if device.type == "cuda":
                torch.cuda.set_device(device)
            return DDP(device)
        from gpt3lab.errors import ConfigError
        raise ConfigError(f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but train.parallel="
                          f"{parallel!r}; use --set train.parallel=ddp (fsdp is not implemented yet)")
    return Distributed()
