"""`gpt3lab train --data DATA_DIR --out RUN_DIR [--preset NAME] [--max-steps N] [--resume] [--config FILE]
[--set key=value ...]`: pretrain a GPT on prepared shards.

Settings are layered: dataclass defaults < preset < config FILE ({"model": {...}, "train": {...}}) < --set
< explicit flags. model.vocab_size defaults to the data's tokenizer. On --resume the run's saved configs are
the base; only bookkeeping settings (RESUME_MAY_CHANGE) may differ from them.

Distributed: `torchrun --nproc_per_node N -m gpt3lab train ... --set train.parallel=ddp|fsdp`. batch_size
is per process. A resume may use another world size W (and mode): the global micro-batch (batch_size x
world size of the saved run) is kept, so batch_size becomes global / W, which W must divide.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.config import ModelConfig, TrainConfig, apply_overrides, check_overrides_known, from_dict
from gpt3lab.errors import CheckpointError, ConfigError, DataError, UserError

RESUME_MAY_CHANGE = {"max_steps", "eval_every", "eval_batches", "log_every", "save_every", "keep_last",
                     "device", "compile", "peak_flops", "parallel", "activation_checkpointing", "on_nonfinite"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data dir (gpt3lab prepare); on --resume "
                   "defaults to the run's")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run dir: checkpoints/, log.jsonl, log.csv")
    p.add_argument("--preset", help="model + train defaults from gpt3lab/presets.py (tiny, demo, gpt3-small, ...)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides train.max_steps)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its newest checkpoint")
    p.add_argument("--config", metavar="FILE", help='JSON {"model": {...}, "train": {...}}')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override model.* / train.* fields, e.g. --set train.lr=3e-4 --set model.n_layer=6")
    p.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop (and save) after this wall time")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    s = train(args.data, args.out, preset=args.preset, config_file=args.config, overrides=args.set,
              max_steps=args.max_steps, resume=args.resume, max_seconds=args.time_budget,
              progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0                                   # torchrun: rank 0 reports
    bpb = f", val bits/byte {s['val_bpb']:.3f}" if s.get("val_bpb") is not None else ""
    print(f"{s['checkpoint']}: step {s['step']}, loss {s['loss']:.4f}{bpb}")
    return 0


def layer_configs(model_d: dict, train_d: dict, config_file: str | None, overrides: list[str],
                  max_steps: int | None) -> tuple[dict, dict, bool]:
    """Apply config FILE, --set and flags on top of base dicts; returns (model, train, vocab_explicit)."""
    vocab_explicit = False
    if config_file:
        try:
            d = json.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config {config_file}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {config_file}: invalid JSON ({e})") from None
        if not isinstance(d, dict) or set(d) - {"model", "train"}:
            raise ConfigError(f"--config {config_file}: expected {{\"model\": {{...}}, \"train\": {{...}}}}")
        model_d = {**model_d, **d.get("model", {})}
        train_d = {**train_d, **d.get("train", {})}
        vocab_explicit = "vocab_size" in d.get("model", {})
    mcfg = from_dict(ModelConfig, model_d, where="model config")
    tcfg = from_dict(TrainConfig, train_d, where="train config")
    check_overrides_known(overrides, ("model", mcfg), ("train", tcfg))
    vocab_explicit |= any(o.split("=", 1)[0].strip() in ("vocab_size", "model.vocab_size") for o in overrides)
    mcfg, tcfg = apply_overrides(mcfg, overrides, "model"), apply_overrides(tcfg, overrides, "train")
    if max_steps is not None:
        tcfg = replace(tcfg, max_steps=max_steps)
    return asdict(mcfg), asdict(tcfg), vocab_explicit


def _resume_batch_size(saved: dict, tcfg: TrainConfig, overrides: list[str], world: int) -> TrainConfig:
    """Per-process batch_size for resuming on `world` processes: the saved global micro-batch / world."""
    old_b, old_w = saved.get("train", {}).get("batch_size", tcfg.batch_size), int(saved.get("world_size", 1))
    glob = old_b * old_w
    explicit = any(o.split("=", 1)[0].strip() in ("batch_size", "train.batch_size") for o in overrides)
    if explicit and tcfg.batch_size * world != glob:
        raise ConfigError(f"--set batch_size={tcfg.batch_size} on {world} process(es) gives a global micro-batch "
                          f"of {tcfg.batch_size * world}, the run used {glob} ({old_w} x {old_b}); drop the "
                          f"setting (batch_size is derived on resume)")
    if glob % world:
        raise ConfigError(f"cannot resume on world size {world}: it does not divide the run's global "
                          f"micro-batch of {glob} sequences ({old_w} processes x batch_size {old_b}); "
                          f"use a world size dividing {glob}")
    return replace(tcfg, batch_size=glob // world)


def _check_resume_compatible(saved_model: dict, saved_train: dict, mcfg: ModelConfig, tcfg: TrainConfig,
                             ckpt: Path) -> None:
    saved_train = {k: v for k, v in saved_train.items() if k != "batch_size"}   # see _resume_batch_size
    bad = [f"model.{k}: {saved_model.get(k)!r} -> {v!r}" for k, v in asdict(mcfg).items() if saved_model.get(k) != v]
    bad += [f"train.{k}: {saved_train.get(k)!r} -> {v!r}" for k, v in asdict(tcfg).items()
            if k in saved_train and saved_train.get(k) != v and k not in RESUME_MAY_CHANGE]
    if bad:
        raise CheckpointError(f"cannot resume {ckpt} with a different configuration ({'; '.join(bad)}); only "
                              f"{', '.join(sorted(RESUME_MAY_CHANGE))} may change on --resume")


def _check_data(data_dir) -> Path:
    p = Path(data_dir)
    if not p.is_dir():
        raise DataError(f"--data {p}: no such directory; create it with `gpt3lab prepare SOURCE --out {p}`")
    return p


def train(data_dir, out_dir, *, preset: str | None = None, config_file: str | None = None,
          overrides: list[str] = (), max_steps: int | None = None, resume: bool = False,
          max_seconds: float | None = None, progress: bool = True) -> dict:
    """Build (or resume) a run and train it; returns a summary (checkpoint, step, loss, val_bpb, ...)."""
    from gpt3lab.data import WindowLoader, load_data_tokenizer
    from gpt3lab.presets import get_preset
    from gpt3lab.train.distributed import from_env, local_device
    from gpt3lab.train.loop import RunInfo, Trainer

    out = Path(out_dir)
    overrides = list(overrides)
    ckpt = None
    if resume:
        ckpts = ckpt_io.list_checkpoints(out)
        if not ckpts:
            raise CheckpointError(f"--resume: {out} holds no checkpoint (checkpoints/step_*); "
                                  f"drop --resume to start a new run there")
        ckpt = ckpts[-1]
        saved = ckpt_io.read_config(ckpt)
        model_d, train_d = saved["model"], saved.get("train", {})
        data_dir = data_dir or saved.get("data")
    else:
        if out.exists() and ((out / "checkpoints").exists() or (out / "log.jsonl").exists()):
            raise UserError(f"--out {out} already holds a run; pass --resume to continue it or pick a new --out")
        p = get_preset(preset) if preset else None
        model_d, train_d = (dict(p.model) if p else {}), (dict(p.train) if p else {})
    if data_dir is None:
        raise DataError("--data DATA_DIR is required (the prepared data to train on)")
    data = _check_data(data_dir)
    tok = load_data_tokenizer(data)
    if preset and resume:
        p = get_preset(preset)
        preset_model = {k: v for k, v in p.model.items() if k != "vocab_size"}   # the data decides vocab
        model_d, train_d = {**model_d, **preset_model}, {**train_d, **p.train}
    model_d, train_d, vocab_explicit = layer_configs(model_d, train_d, config_file, overrides, max_steps)
    if not vocab_explicit and not resume:
        model_d["vocab_size"] = tok.vocab_size
    if model_d["vocab_size"] != tok.vocab_size:
        raise ConfigError(f"model.vocab_size={model_d['vocab_size']} does not match the data's tokenizer "
                          f"{tok.name} (vocab_size {tok.vocab_size}) in {data}; drop the setting or "
                          f"prepare the data with a matching tokenizer")
    mcfg, tcfg = ModelConfig(**model_d), TrainConfig(**train_d)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if resume:
        tcfg = _resume_batch_size(saved, tcfg, overrides, world)
        _check_resume_compatible(saved["model"], saved.get("train", {}), mcfg, tcfg, ckpt)
    from gpt3lab.train.schedule import check_world_size
    check_world_size(tcfg, mcfg.context, world)

    device = local_device(tcfg.device)
    dist = from_env(tcfg.parallel, device)
    torch.manual_seed(tcfg.seed)   # the same init on every rank (DDP broadcasts rank 0's anyway)
    if resume:
        model = ckpt_io.load_model(ckpt).train()
    else:
        from gpt3lab.model import GPT
        model = GPT(mcfg)
    kw = dict(seed=tcfg.seed, rank=dist.rank, world_size=dist.world_size)
    train_data = WindowLoader(data, "train", mcfg.context, tcfg.batch_size, **kw)
    eval_data = _val_loader(data, mcfg.context, tcfg.batch_size, kw)
    info = RunInfo(out_dir=out, tokenizer=tok, extra_config={"data": str(data.resolve())}, progress=progress,
                   max_seconds=max_seconds)
    trainer = Trainer(model, mcfg, tcfg, train_data, eval_data, info=info, dist=dist, device=device)
    if resume:
        trainer.resume(ckpt)
    try:
        if trainer.step >= tcfg.max_steps:
            raise ConfigError(f"{ckpt} is already at step {trainer.step} >= max_steps {tcfg.max_steps}; "
                              f"pass a larger --max-steps to train further")
        record = trainer.fit()
    finally:
        dist.close()
    return {"run_dir": str(out), "checkpoint": str(ckpt_io.step_dir(out, trainer.step)), "step": trainer.step,
            "tokens": trainer.tokens, "loss": record.get("loss"), "val_loss": record.get("val_loss"),
            "val_bpb": record.get("val_bpb"), "seconds": record.get("seconds"),
            "params": model.num_params(), "model": asdict(mcfg), "train": asdict(tcfg)}


def _val_loader(data: Path, context: int, batch_size: int, kw: dict):
    """The val split's loader, or None when the data has no (usable) val split."""
    from gpt3lab.data import WindowLoader

    try:
        return WindowLoader(data, "val", context, batch_size, **kw)
    except DataError as e:
        import sys
        print(f"gpt3lab: warning: no evaluation ({e})", file=sys.stderr)
        return None


__all__ = ["add_arguments", "run", "train", "layer_configs", "RESUME_MAY_CHANGE"]
