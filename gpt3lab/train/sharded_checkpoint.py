"""Sharded checkpoints with torch.distributed.checkpoint (DCP): every rank writes its own shards.

    CKPT/config.json, tokenizer files    as in every checkpoint (written by rank 0)
    CKPT/train_state/state.json          step, tokens, data positions, RNG (rank 0)
    CKPT/sharded/                        DCP: .metadata + one .distcp file per rank, holding
                                         {"model": weights, "optim": AdamW exp_avg / exp_avg_sq / step},
                                         and SHA256SUMS (train/dcp_files.py)

Keys are the parallelized model's parameter names (c_attn split into q, k, v: train/parallelize.py); a
plain model's fused c_attn is presented as three row views, so one format serves every layout (FSDP,
FSDP x TP, one process) and DCP reshards on load: a run saved on N processes resumes on M.

A save writes into RUN/checkpoints/.tmp-step_N, which rank 0 renames to step_N once every rank's shards
and the metadata are on disk; a kill at any moment leaves the previous checkpoint the newest complete one.
With async_save the state is copied to CPU memory at the save and written by a background thread while
training continues; the next save (or the end of training) first waits for it.
DCP's .metadata is a pickle; it is read only through train/dcp_files.py (digest, then an unpickler that
admits DCP's metadata classes alone), and every shard file is checked against the SHA-256 recorded at save
before it is read, so load, resume and export refuse a damaged or hostile checkpoint with one line naming
the file. `export` writes the single safetensors file to load, serve or share.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.errors import CheckpointError, UserError
from gpt3lab.train.dcp_files import DigestWriter, VerifyingReader
from gpt3lab.train.parallelize import split_qkv_state

# one process without a process group is a supported use (export, single-process resume), not a mistake
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def model_state(model: torch.nn.Module) -> dict:
    """Weights keyed in the one sharded-checkpoint form: DTensor shards, or views of a plain model's tensors
    (loading into them fills the model in place). The tied lm_head is wte's and is stored once."""
    sd = get_model_state_dict(model)
    return split_qkv_state({k: v for k, v in sd.items() if not k.endswith(ckpt_io.TIED_KEY)})


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(the optimizer's state keyed like `model_state`, the full optimizer state dict it views into).

    An optimizer that has not stepped yet gets its state created (a zero-lr step on zero grads)."""
    osd = get_optimizer_state_dict(model, optimizer)
    return split_qkv_state(osd["state"]), osd


def _no_dist() -> bool:
    return not (torch_dist.is_available() and torch_dist.is_initialized())


def _is_main() -> bool:
    return _no_dist() or torch_dist.get_rank() == 0


def _barrier() -> None:
    if not _no_dist():
        torch_dist.barrier()


class ShardedCheckpointer:
    """Writes sharded checkpoints, synchronously or in the background (`async_save`); all ranks call it."""

    def __init__(self, async_save: bool = False):
        self.async_save = async_save
        self.pending = None          # (future, tmp dir, dest, after) of the save in flight
        # the background save runs its own collectives: a separate group keeps them out of training's
        self.group = torch_dist.new_group(backend="gloo") if async_save and not _no_dist() else None

    def save(self, dest: str | Path, model, optimizer, write_meta, after=None) -> None:
        """Write `dest` (a step dir): every rank its shards; rank 0 calls write_meta(tmp) for config, tokenizer
        and state.json, then (once complete) renames the directory into place and calls after()."""
        self.wait()                  # one save in flight at most: its CPU copy bounds the extra memory
        dest = Path(dest)
        tmp = dest.parent / f".tmp-{dest.name}"
        if _is_main():
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / ckpt_io.SHARDED).mkdir(parents=True)
            write_meta(tmp)
        _barrier()
        state = {"model": model_state(model), "optim": optimizer_state(model, optimizer)[0]}
        writer = DigestWriter(tmp / ckpt_io.SHARDED)
        if self.async_save:
            self.pending = (dcp.async_save(state, storage_writer=writer, process_group=self.group,
                                           no_dist=_no_dist()), tmp, dest, after)
        else:
            dcp.save(state, storage_writer=writer, no_dist=_no_dist())
            self._commit(tmp, dest, after)

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete and in place."""
        if self.pending is not None:
            future, tmp, dest, after = self.pending
            self.pending = None
            future.result()
            self._commit(tmp, dest, after)

    @staticmethod
    def _commit(tmp: Path, dest: Path, after) -> None:
        # dcp.save returns on every rank only after the coordinator wrote .metadata, i.e. all shards exist
        if _is_main():
            ckpt_io.commit_dir(tmp, dest)
            if after is not None:
                after()


def load(ckpt: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Fill `model` (and `optimizer`) in place from a sharded checkpoint, whatever layout wrote it.

    Every file is verified before it is read (train/dcp_files.py); CheckpointError (one line) otherwise."""
    reader = VerifyingReader(Path(ckpt) / ckpt_io.SHARDED)
    state = {"model": model_state(model)}
    if optimizer is not None:
        state["optim"], osd = optimizer_state(model, optimizer)
    try:
        dcp.load(state, storage_reader=reader, no_dist=_no_dist())
    except (CheckpointException, Exception) as e:   # CheckpointException (all ranks' failures) is a BaseException
        raise _load_error(ckpt, e) from None
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, osd)


def _load_error(ckpt, e: BaseException) -> Exception:
    """The one-line error of a failed load: the first rank's own error when it is one of ours."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    if isinstance(e, UserError):
        return e
    detail = " ".join(str(e).split())[:300]
    if isinstance(e, (RuntimeError, ValueError, KeyError, AssertionError)):
        return CheckpointError(f"{ckpt}: sharded checkpoint does not fit this model ({detail}); resume with the "
                               f"configuration the run was started with")
    return CheckpointError(f"{ckpt}: cannot read the sharded checkpoint ({type(e).__name__}: {detail})")


def load_model(ckpt: str | Path, model_cfg) -> torch.nn.Module:
    """A plain (one-process) GPT holding the weights of a sharded checkpoint."""
    from gpt3lab.model import GPT

    with torch.device("meta"):
        model = GPT(model_cfg)
    model = model.to_empty(device="cpu")
    model.lm_head.weight = model.transformer.wte.weight      # re-tie after to_empty
    load(ckpt, model)
    return model.eval()


def export(src: str | Path, out: str | Path) -> Path:
    """Write the single-file checkpoint (model.safetensors + config + tokenizer) of a checkpoint or run
    (its newest checkpoint); the training state is left out. Returns OUT."""
    from gpt3lab.config import ModelConfig, from_dict

    ckpt = ckpt_io.resolve(src)
    cfg = ckpt_io.read_config(ckpt)
    mcfg = from_dict(ModelConfig, cfg["model"], where=f"{ckpt}/config.json model")
    model = load_model(ckpt, mcfg) if ckpt_io.is_sharded(ckpt) else ckpt_io.load_model(ckpt)
    extra = {k: v for k, v in cfg.items() if k not in ("format", "version", "model")}
    return ckpt_io.save_checkpoint(out, model, mcfg, ckpt_io.load_tokenizer(ckpt), extra=extra)
