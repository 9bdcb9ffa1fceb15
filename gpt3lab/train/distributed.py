"""The one seam between the training loop and multi-process training.

The loop only calls the methods of `Distributed`; the single-process version below is rank 0 of 1.
`from_env()` picks the version for this process: `DDP` or `FSDP` (with tensor parallelism when
train.tensor_parallel > 1) under torchrun (train.parallel), else single-process. Single-process and DDP
checkpoints are one safetensors file plus an optimizer state keyed by parameter name; FSDP/TP checkpoints
are sharded (train/sharded_checkpoint.py: each rank writes its own shards). Either kind resumes on any
number of processes and any mode, as long as the data-parallel size divides the global micro-batch.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

from gpt3lab.devices import resolve_device
from gpt3lab.errors import CheckpointError, ConfigError


class Distributed:
    """Single process: rank 0 of 1. Subclasses override what changes with several processes."""

    rank, world_size = 0, 1
    sharded_checkpoints = False        # True: save/resume with torch.distributed.checkpoint (every rank writes)

    @property
    def dp_rank(self) -> int:
        """This process's data-parallel replica (tensor-parallel ranks of one replica share the data)."""
        return self.rank

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: the global micro-batch is batch_size x dp_size."""
        return self.world_size

    @property
    def is_main(self) -> bool:
        """Only the main process logs, evaluates for the log and writes checkpoints."""
        return self.rank == 0

    def wrap_model(self, model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
        """The module the loop calls for training (the optimizer is built after this, on its params)."""
        return model

    def no_sync(self, model: torch.nn.Module, final_micro_step: bool):
        """Context for a micro-step's backward: skip gradient all-reduce except on the last one."""
        return contextlib.nullcontext()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def clip_grad_norm(self, params, max_norm: float) -> float:
        """Clip the gradients to `max_norm` (inf: measure only); -> the total norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (collective: all ranks must call it)."""
        return flag

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass

    # ---- checkpoints: every rank calls these (gathering is collective); rank 0 writes ---------------
    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Full, unsharded weights on the CPU (GPT-2 key names, tied lm_head included)."""
        return {k: _full(v).cpu() for k, v in model.state_dict().items()}

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Optimizer state keyed by parameter name, full tensors on the CPU (mode-independent)."""
        names = _param_names(model)
        sd = optimizer.state_dict()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = {names[id(p)]: {k: _full(v).cpu() for k, v in sd["state"][i].items()}
                 for i, p in enumerate(params) if i in sd["state"]}
        groups, i = [], 0
        for g in sd["param_groups"]:
            groups.append({**g, "params": [names[id(p)] for p in params[i:i + len(g["params"])]]})
            i += len(g["params"])
        return {"format": "by-name", "state": state, "param_groups": groups}

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
        """Inverse of `optimizer_state`: map names back to this optimizer's params, re-shard DTensors."""
        if saved.get("format") != "by-name":        # checkpoints written before the portable format
            optimizer.load_state_dict(saved)
            return
        names = _param_names(model)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        ids = {names[id(p)]: i for i, p in enumerate(params)}
        if any(".c_attn.q." in n for n in ids):         # a parallelized model: c_attn split into q, k, v
            from gpt3lab.train.parallelize import split_qkv_state
            saved = {**saved, "state": split_qkv_state(saved["state"]), "param_groups": [
                {**g, "params": list(split_qkv_state(dict.fromkeys(g["params"])))} for g in saved["param_groups"]]}
        groups = saved["param_groups"]
        if [n for g in groups for n in g["params"]] != list(ids):
            raise CheckpointError("saved optimizer state lists other parameters than this model trains")
        state = {ids[n]: {k: _like(v, params[ids[n]]) for k, v in s.items()} for n, s in saved["state"].items()}
        optimizer.load_state_dict({"state": state, "param_groups": [
            {**g, "params": [ids[n] for n in g["params"]]} for g in groups]})


def _full(t):
    """A DTensor (FSDP shard) gathered to the whole tensor; plain tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A saved full state tensor laid out like `param` (sharded the same way when it is a DTensor)."""
    if hasattr(param, "device_mesh") and value.dim() > 0:
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    # a scalar (AdamW's step) is shared by the q, k, v split of one saved c_attn: each param needs its own
    return value.clone() if value.dim() == 0 else value


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    """id(param) -> its first name (a tied weight is named once, as named_parameters yields it)."""
    return {id(p): n.removeprefix("_orig_mod.") for n, p in model.named_parameters()}


class DDP(Distributed):
    """torch.distributed DistributedDataParallel (one process per device, launched by torchrun)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        self.dist, self.device = dist, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def wrap_model(self, model, precision="fp32"):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model, final_micro_step):
        return contextlib.nullcontext() if final_micro_step else model.no_sync()

    def all_reduce_mean(self, value):
        value = value.detach().clone()
        # gloo has no AVG: sum and divide
        self.dist.all_reduce(value, op=self.dist.ReduceOp.SUM)
        return value / self.world_size

    def any_rank(self, flag):
        t = torch.tensor([int(flag)], device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self):
        self.dist.barrier()

    def close(self):
        self.dist.destroy_process_group()


class FSDP(DDP):
    """FSDP2 (`fully_shard`) over the dp dimension of a (dp, tp) mesh, tensor parallelism over tp.

    Parameters, grads and optimizer state are sharded; each block is one FSDP unit (all-gathered just
    before its forward/backward, freed after). What is sharded how lives in train/parallelize.py.
    Checkpoints are sharded (every rank writes its own part; nothing is gathered).
    """

    sharded_checkpoints = True

    def __init__(self, device: torch.device, tensor_parallel: int = 1):
        super().__init__(device)
        from gpt3lab.train.parallelize import make_mesh

        self.mesh = make_mesh(device, self.world_size, tensor_parallel)

    @property
    def dp_rank(self):
        return self.mesh["dp"].get_local_rank()

    @property
    def dp_size(self):
        return self.mesh["dp"].size()

    def wrap_model(self, model, precision="fp32"):
        from gpt3lab.train.parallelize import parallelize

        return parallelize(model, self.mesh, precision)

    def no_sync(self, model, final_micro_step):
        model.set_requires_gradient_sync(final_micro_step)   # reduce-scatter only on the last micro-step
        return contextlib.nullcontext()

    def clip_grad_norm(self, params, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)    # sharded grads: a replicated DTensor
        return float(_full(norm))


def launched_by_torchrun() -> bool:
    """torchrun (or any launcher speaking its protocol) sets RANK, WORLD_SIZE and MASTER_ADDR."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def local_device(requested: str) -> torch.device:
    """train.device -> this process's device (auto: cuda:LOCAL_RANK when CUDA exists, else cpu)."""
    return resolve_device(requested, flag="train.device")


def from_env(parallel: str, device: torch.device, tensor_parallel: int = 1) -> Distributed:
    """The Distributed for this process.

    Under torchrun: DDP or FSDP as train.parallel says (parallel=none with WORLD_SIZE > 1 is an error:
    the ranks would train separate models). Without torchrun: fsdp is an error (sharding needs a
    process group), ddp runs single-process with a warning (DDP over one process is the plain loop).
    tensor_parallel > 1 needs parallel=fsdp (FSDP shards over the other mesh dimension).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if tensor_parallel > 1 and parallel != "fsdp":
        raise ConfigError(f"train.tensor_parallel={tensor_parallel} needs train.parallel=fsdp under torchrun "
                          f"(FSDP shards over the data-parallel dimension); got parallel={parallel!r}")
    if not launched_by_torchrun():
        if parallel == "fsdp":
            raise ConfigError("train.parallel=fsdp needs a torchrun launch, e.g. `torchrun --nproc_per_node N "
                              "-m gpt3lab train ... --set train.parallel=fsdp`; for one process use parallel=none")
        if parallel == "ddp":
            print("gpt3lab: warning: train.parallel=ddp without torchrun; training as a single process",
                  file=sys.stderr)
        return Distributed()
    if parallel == "none":
        if world > 1:
            raise ConfigError(f"launched by torchrun with WORLD_SIZE={world} but train.parallel='none'; "
                              f"use --set train.parallel=ddp or --set train.parallel=fsdp")
        return Distributed()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return FSDP(device, tensor_parallel) if parallel == "fsdp" else DDP(device)
