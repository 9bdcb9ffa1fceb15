"""THE training loop: pretraining and fine-tuning both run `Trainer.fit`.

The loop knows a model (any nn.Module with `model(x, y) -> (logits, loss)`), a loss function (default: the
model's own cross-entropy; distillation passes its own, see `LossFn`), a train batch source and an
optional eval batch source (anything with `next_batch(batch_size) -> (x, y)`, `state_dict()` and
`load_state_dict()`), a TrainConfig and a `Distributed` seam. It optimises only parameters with
requires_grad (so LoRA adapters just work) and knows nothing about where batches come from.

One optimizer step = `accum` micro-steps of `batch_size` sequences (accum from the batch ramp), AdamW
with decoupled weight decay on matrices only, global-norm clipping, LR from `schedule.lr_for`.
Parallelism (DDP / FSDP / FSDP x TP) enters only through the `Distributed` seam: it wraps the model, skips
the gradient all-reduce on non-final micro-steps, averages logged losses and says whether checkpoints are
sharded (then every rank writes its shards through sharded_checkpoint.py) or gathered.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.errors import UserError
from gpt3lab.train import budget, perf
from gpt3lab.train.distributed import Distributed
from gpt3lab.train.logger import make_logger, plain_line
from gpt3lab.train.schedule import batch_tokens_at, lr_for, micro_tokens, scaled

# train.on_nonfinite="skip" gives up after this many non-finite steps in a row: the weights themselves
# have diverged and skipping cannot recover the run
MAX_CONSECUTIVE_SKIPS = 10

LOG_FIELDS = ["step", "loss", "lr", "tokens", "tokens_per_s", "mfu", "grad_norm", "val_loss", "val_bpb",
              "seconds"]


class LossFn(Protocol):
    """The training objective, a plug-in of the Trainer (torchtitan's `build_loss_fn`): `(model, x, y) ->
    (loss, parts)`, with `model` the (wrapped) module the loop trains. `parts` are detached-able scalar
    terms of the loss (e.g. {"kd_loss": ..., "ce_loss": ...}), averaged over the step and logged under
    their names; `log_fields` names them for log.csv. Evaluation always reports the model's cross-entropy."""

    log_fields: tuple[str, ...]

    def __call__(self, model: torch.nn.Module, x: torch.Tensor,
                 y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class CrossEntropy:
    """The default loss: the model's mean next-token cross-entropy, no parts."""

    log_fields = ()

    def __call__(self, model, x, y):
        _, loss = model(x, y)
        return loss, {}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on biases, LayerNorm gains and embeddings.

    Embeddings (wte, wpe and therefore the tied unembedding) are not decayed: decay would shrink the
    vectors of rare tokens toward zero between their rare updates. Frozen params are left out.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():            # parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW(beta1, beta2, eps) over `param_groups`; the fused CUDA kernel on GPUs."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=device.type == "cuda")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs that support it, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


@dataclass
class RunInfo:
    """What the loop writes next to its checkpoints (config.json) and how it reports bits/byte."""
    out_dir: Path | None = None        # None: no logs, no checkpoints (tests, notebooks)
    tokenizer: object = None           # saved into every checkpoint
    extra_config: dict | None = None   # more config.json keys, e.g. {"data": "data/shakespeare"}
    progress: bool = True
    max_seconds: float | None = None   # wall-clock budget: stop (and save) after this many seconds
    # with max_seconds: cfg.max_steps is only a first estimate; the loop re-fits it to the budget as the run
    # goes (train/budget.py: refit), never above this many steps. None: max_steps is kept as given
    step_ceiling: int | None = None


class NonFiniteError(UserError):
    """The loss, the gradients or the weights became NaN/inf (the run diverged)."""


class Trainer:
    """Owns model, optimizer and counters; `fit()` trains to cfg.max_steps (or the time budget)."""

    def __init__(self, model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, train_data,
                 eval_data=None, *, info: RunInfo | None = None, dist: Distributed | None = None,
                 device: torch.device | str = "cpu", loss_fn: LossFn | None = None):
        self.model, self.model_cfg, self.cfg = model, model_cfg, cfg
        self.loss_fn = loss_fn or CrossEntropy()
        self.log_fields = LOG_FIELDS + list(self.loss_fn.log_fields)
        self.train_data, self.eval_data = train_data, eval_data
        self.info, self.dist = info or RunInfo(), dist or Distributed()
        self.device = torch.device(device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model.to(self.device)
        self.model.checkpoint_activations = cfg.activation_checkpointing
        self.fwd = self.dist.wrap_model(self.model, self.precision)   # FSDP shards params in place
        self.optimizer = make_optimizer(self.model, cfg, self.device)  # ...so build AdamW on the shards
        self.sched = scaled(cfg, model_cfg.context, self.dist.dp_size)   # schedule_scale resolved
        if cfg.compile:
            self.fwd = torch.compile(self.fwd)
        self.checkpointer = None               # sharded (FSDP/TP) or asynchronous saves: every rank writes
        if self.dist.sharded_checkpoints or cfg.async_checkpoint:
            from gpt3lab.train.sharded_checkpoint import ShardedCheckpointer
            self.checkpointer = ShardedCheckpointer(async_save=cfg.async_checkpoint)
        self.step, self.tokens = 0, 0          # optimizer steps done, tokens trained on (all ranks)
        self.skipped_in_a_row = 0              # non-finite steps skipped since the last good one
        self._eval_cache = None
        self.flops_per_token = perf.flops_per_token(model_cfg)

    # ---- one optimizer step ----------------------------------------------------------------------
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict:
        """Accumulate gradients over the micro-batches of one step, clip, update. Returns step stats."""
        cfg, T, world = self.sched, self.model_cfg.context, self.dist.dp_size
        step_tokens = batch_tokens_at(self.tokens, cfg, T, world)
        accum = step_tokens // micro_tokens(cfg.batch_size, T, world)
        lr = lr_for(self.step, self.tokens, step_tokens, cfg, T, world)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total, parts = torch.zeros((), device=self.device), {}
        for i in range(accum):
            x, y = self.train_data.next_batch(cfg.batch_size)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.dist.no_sync(self.fwd, final_micro_step=i == accum - 1), self.autocast():
                loss, terms = self.loss_fn(self.fwd, x, y)
                (loss / accum).backward()
            total += loss.detach()
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + v.detach().float()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # grad_clip=0 means "no clipping" (nanoGPT's convention); max_norm=inf only measures the norm
        grad_norm = self.dist.clip_grad_norm(params, cfg.grad_clip or math.inf)
        loss = self.dist.all_reduce_mean(total / accum).item()     # equal on all ranks, as grad_norm is
        skipped = self._check_finite(loss, grad_norm, lr)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += step_tokens
        record = {"step": self.step, "loss": loss, "lr": lr, "tokens": self.tokens,
                  "grad_norm": grad_norm, "_step_tokens": step_tokens}
        record.update({k: self.dist.all_reduce_mean(v / accum).item() for k, v in parts.items()})
        return {**record, "skipped": True} if skipped else record

    # ---- non-finite losses and weights (train.on_nonfinite) --------------------------------------
    def _check_finite(self, loss: float, grad_norm: float, lr: float) -> bool:
        """True when this step must be skipped; raises NonFiniteError when the run must stop.

        Runs before optimizer.step(), so the weights (and the last checkpoint) are never touched by a
        non-finite update. loss and grad_norm are already reduced, so every rank takes the same branch.
        """
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.skipped_in_a_row = 0
            return False
        what = f"step {self.step + 1}: loss {loss} and gradient norm {grad_norm} at lr {lr:.3g}"
        last = ckpt_io.list_checkpoints(self.info.out_dir)[-1:] if self.info.out_dir is not None else []
        keep = f"; the last checkpoint ({last[0]}) is finite and kept" if last else ""
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteError(f"{what}: the run diverged{keep}; lower train.lr (or raise train.warmup_steps) "
                                 f"and resume, or set train.on_nonfinite=skip to skip such steps")
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise NonFiniteError(f"{what}: {self.skipped_in_a_row} non-finite steps in a row were skipped, the "
                                 f"run does not recover{keep}; lower train.lr and resume")
        return True

    def _check_finite_weights(self) -> None:
        """NonFiniteError when any weight is NaN/inf: such a checkpoint is never written."""
        local = (p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters())   # FSDP shards
        bad = any(not bool(torch.isfinite(t).all()) for t in local)
        if self.dist.any_rank(bad):
            raise NonFiniteError(f"step {self.step}: the weights hold NaN/inf values; not saving them (earlier "
                                 f"checkpoints are kept); lower train.lr and resume from the last checkpoint")

    # ---- evaluation ------------------------------------------------------------------------------
    def eval_batches(self) -> list:
        """The same eval batches every time (fixed_batches when the source has it)."""
        if self._eval_cache is None:
            src, n = self.eval_data, self.cfg.eval_batches
            if hasattr(src, "fixed_batches"):
                self._eval_cache = src.fixed_batches(n, seed=self.cfg.seed)
            else:
                self._eval_cache = [src.next_batch(self.cfg.batch_size) for _ in range(n)]
        return self._eval_cache

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean val loss over the eval batches, and bits/byte when the source knows its bytes."""
        self.model.eval()
        losses = []
        for x, y in self.eval_batches():
            with self.autocast():
                _, loss = self.model(x.to(self.device), y.to(self.device))
            losses.append(loss.float())
        val = self.dist.all_reduce_mean(torch.stack(losses).mean()).item()
        out = {"val_loss": val}
        src = self.eval_data
        if getattr(src, "num_bytes", 0) and getattr(src, "num_tokens", 0):
            out["val_bpb"] = val * src.num_tokens / (src.num_bytes * math.log(2))
        return out

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until cfg.max_steps (or the time budget); returns the last log record."""
        cfg, main = self.cfg, self.dist.is_main      # max_steps: read self.cfg, a re-fit may change it
        peak = cfg.peak_flops or perf.peak_flops(
            self.device, torch.bfloat16 if self.precision == "bf16" else torch.float32)
        show_bar = main and self.info.progress
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   disable=not show_bar, dynamic_ncols=True)
        logger = make_logger(cfg.logger, self.info.out_dir if main else None,
                             {"model": asdict(self.model_cfg), "train": asdict(cfg)})
        start, record = time.perf_counter(), {}
        try:
            while self.step < self.cfg.max_steps:
                record = self._one_step(peak, start)
                if "max_steps" in record:              # re-fitted to the time budget
                    bar.total = record["max_steps"]
                out_of_time = record.pop("_out_of_time")      # (popped always: never logged)
                last = self.step == self.cfg.max_steps or out_of_time
                if main:
                    self.log(record)
                    logger.log(record)
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or last:
                        bar.set_postfix(_postfix(record), refresh=False)
                        if not show_bar:      # no bar: a plain line now and then, so the run is not silent
                            print(plain_line(record, self.cfg.max_steps), file=sys.stderr, flush=True)
                if self.step % cfg.save_every == 0 or last:
                    self.save()
                if last:
                    break
            if self.checkpointer is not None:
                self.checkpointer.wait()          # the last asynchronous save is complete before we return
        finally:
            bar.close()
            logger.close()
        return record

    def _one_step(self, peak: float, start: float) -> dict:
        """train_step plus throughput, MFU, the due evaluation and the time budget check."""
        cfg = self.cfg
        t0 = time.perf_counter()
        record = self.train_step()
        _sync(self.device)
        dt = time.perf_counter() - t0
        record["tokens_per_s"] = record.pop("_step_tokens") / dt
        record["mfu"] = perf.mfu(record["tokens_per_s"], self.flops_per_token, peak)
        out_of_time = self._out_of_time(start)
        last = self.step == cfg.max_steps or out_of_time
        if self.eval_data is not None and cfg.eval_batches and (
                last or (cfg.eval_every and self.step % cfg.eval_every == 0)):
            record.update(self.evaluate())
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["_out_of_time"] = out_of_time
        if not last and self._refit_steps(start):
            record["max_steps"] = self.cfg.max_steps
        return record

    def _refit_steps(self, start: float) -> bool:
        """With RunInfo.step_ceiling: at every eval_every steps in the first REFIT_UNTIL of the budget, set
        max_steps (and so the LR schedule's end) to what the pace so far fits in the budget. All ranks use
        the same (averaged) elapsed time, so they agree on the new count. True when max_steps changed."""
        ceiling, budget_s = self.info.step_ceiling, self.info.max_seconds
        if ceiling is None or budget_s is None or self.step % (self.cfg.eval_every or budget.REFIT_EVERY):
            return False
        elapsed = self.dist.all_reduce_mean(torch.tensor(time.perf_counter() - start, dtype=torch.float32,
                                                         device=self.device)).item()
        if elapsed > budget.REFIT_UNTIL * budget_s:
            return False
        n = budget.refit(self.step, elapsed, budget_s, ceiling)
        if n == self.cfg.max_steps:
            return False
        self.cfg = replace(self.cfg, max_steps=n)
        self.sched = scaled(self.cfg, self.model_cfg.context, self.dist.dp_size)
        return True

    def _out_of_time(self, start: float) -> bool:
        """Whether the wall-clock budget is spent, agreed by all ranks (else some would wait forever
        in evaluate()/save() collectives for ranks that stopped)."""
        if self.info.max_seconds is None:
            return False
        return self.dist.any_rank(time.perf_counter() - start > self.info.max_seconds)

    # ---- logs and checkpoints --------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append one record to RUN/log.jsonl and RUN/log.csv."""
        if self.info.out_dir is None:
            return
        out = Path(self.info.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        csv = out / "log.csv"
        new = not csv.exists()
        with open(csv, "a") as f:
            if new:
                f.write(",".join(self.log_fields) + "\n")
            f.write(_csv_row(record, self.log_fields))

    def state(self) -> dict:
        """JSON part of the training state (the optimizer goes to optimizer.pt)."""
        s = {"step": self.step, "tokens": self.tokens, "world_size": self.dist.dp_size,
             "train_data": self.train_data.state_dict()}
        if self.eval_data is not None:
            s["eval_data"] = self.eval_data.state_dict()
        return s

    def save(self) -> Path | None:
        """Write RUN/checkpoints/step_N atomically, then keep the last K.

        Sharded (FSDP/TP) or asynchronous: every rank writes its own shards (sharded_checkpoint.py).
        Otherwise every rank gathers (DDP: nothing to gather) and only the main process writes.
        """
        if self.info.out_dir is None:
            return None
        self._check_finite_weights()          # before pruning: the last finite checkpoint is never removed
        dest = ckpt_io.step_dir(self.info.out_dir, self.step)
        extra = {"train": asdict(self.cfg), "world_size": self.dist.dp_size, **(self.info.extra_config or {})}
        keep = lambda: ckpt_io.prune_checkpoints(self.info.out_dir, self.cfg.keep_last)  # noqa: E731
        if self.checkpointer is not None:
            state = self.state() if self.dist.is_main else None      # this step's snapshot, even if written later

            def write_meta(tmp):
                ckpt_io.write_config(tmp, self.model_cfg, self.info.tokenizer, extra)
                ckpt_io.save_train_state(tmp, None, state)
            self.checkpointer.save(dest, self.model, self.optimizer, write_meta, after=keep)
            return dest
        weights = self.dist.model_state(self.model)
        opt_state = self.dist.optimizer_state(self.model, self.optimizer)
        if self.dist.is_main:
            state = self.state()
            ckpt_io.save_checkpoint(dest, self.model, self.model_cfg, self.info.tokenizer, extra=extra,
                                    fill_extra=lambda tmp: ckpt_io.save_train_state(tmp, opt_state, state),
                                    weights=weights)
            keep()
        self.dist.barrier()                   # nobody runs ahead (or resumes) before the files exist
        return dest

    def resume(self, ckpt: str | Path) -> None:
        """Restore optimizer, counters, RNG and data positions from `ckpt` (weights: load them first, except
        from a sharded checkpoint, whose weights are loaded here into the already sharded model)."""
        opt_state, state = ckpt_io.load_train_state(ckpt)
        try:
            if ckpt_io.is_sharded(ckpt):    # weights and optimizer, resharded to this layout
                from gpt3lab.train import sharded_checkpoint
                sharded_checkpoint.load(ckpt, self.model, self.optimizer)
            else:
                self.dist.load_optimizer_state(self.model, self.optimizer, opt_state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ckpt_io.CheckpointError(f"{ckpt}: optimizer state does not fit this model ({e}); "
                                          f"resume with the configuration the run was started with") from None
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.train_data.load_state_dict(state["train_data"])
        if self.eval_data is not None and "eval_data" in state:
            self.eval_data.load_state_dict(state["eval_data"])
        ckpt_io.set_rng_state(state["rng"])
        if self.info.out_dir is not None and self.dist.is_main:
            truncate_log(self.info.out_dir, self.step)


def truncate_log(run_dir: str | Path, step: int) -> None:
    """Drop log records past `step` (written after the checkpoint we resume from); log.csv keeps its columns."""
    path, csv = Path(run_dir) / "log.jsonl", Path(run_dir) / "log.csv"
    if not path.exists():
        return
    keep = [r for r in read_log(run_dir) if r["step"] <= step]
    header = csv.read_text().partition("\n")[0] if csv.exists() else ""
    fields = header.split(",") if header else LOG_FIELDS
    write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in keep))
    write_text_atomically(csv, ",".join(fields) + "\n" + "".join(_csv_row(r, fields) for r in keep))


def _csv_row(record: dict, fields: list[str]) -> str:
    return ",".join("" if record.get(k) is None else repr(record[k]) for k in fields) + "\n"


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` via a synced temp sibling + rename: a kill mid-write leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_log(run_dir: str | Path) -> list[dict]:
    """Records of RUN/log.jsonl (a torn last line from a killed process is skipped)."""
    out = []
    for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _postfix(r: dict) -> dict:
    p = {"loss": f"{r['loss']:.3f}", "lr": f"{r['lr']:.1e}", "tok/s": f"{r['tokens_per_s']:.0f}",
         "mfu": f"{100 * r['mfu']:.1f}%"}
    if "val_loss" in r:
        p["val"] = f"{r['val_loss']:.3f}"
    if "val_bpb" in r:
        p["bpb"] = f"{r['val_bpb']:.3f}"
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
