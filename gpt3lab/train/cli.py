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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.argtypes import positive_float, positive_int
from gpt3lab.config import (ModelConfig, TrainConfig, apply_overrides, check_overrides_known, from_dict,
                            override_given)
from gpt3lab.errors import CheckpointError, ConfigError, DataError

RESUME_MAY_CHANGE = {"max_steps", "eval_every", "eval_batches", "log_every", "save_every", "keep_last",
                     "device", "compile", "peak_flops", "parallel", "activation_checkpointing", "on_nonfinite",
                     "tensor_parallel", "async_checkpoint", "logger"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DATA_DIR", help="prepared data dir (gpt3lab prepare); on --resume "
                   "defaults to the run's")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run dir: checkpoints/, log.jsonl, log.csv")
    p.add_argument("--preset", help="model + train defaults from gpt3lab/presets.py (tiny, demo, gpt3-small, ...)")
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps (overrides train.max_steps)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its newest checkpoint")
    p.add_argument("--config", metavar="FILE",
                   help='JSON or YAML (.yaml/.yml) file: {"model": {...}, "train": {...}}')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override model.* / train.* fields, e.g. --set train.lr=3e-4 --set model.n_layer=6")
    p.add_argument("--time-budget", type=positive_float, metavar="SECONDS", help="stop (and save) after this wall time")
    p.add_argument("--fit-to-budget", action="store_true",
                   help="with --time-budget: fit the step count to the budget as the run goes (re-fitted every "
                        "train.eval_every steps from the pace so far, at most --max-steps / train.max_steps), so "
                        "the LR schedule ends with the budget instead of being cut off")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar; print a plain line every train.log_every steps instead")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved {model, train} config (YAML) and exit without training")
    p.add_argument("--reschedule", action="store_true",
                   help="on --resume with a new --max-steps, stretch the LR schedule to it (default: keep "
                        "the run's schedule)")


def run(args: argparse.Namespace, spec: "TrainSpec | None" = None) -> int:
    """`gpt3lab train` (spec: a variant of it, as `gpt3lab distill` runs it)."""
    kw = dict(preset=args.preset, config_file=args.config, overrides=args.set, max_steps=args.max_steps,
              resume=args.resume, reschedule=args.reschedule)
    if args.print_config:
        import yaml
        r = resolve_run(args.data, args.out, for_print=True, model_defaults=spec and spec.model_defaults, **kw)
        print(yaml.safe_dump({"model": asdict(r.mcfg), "train": asdict(r.tcfg)}, sort_keys=False), end="")
        return 0
    if args.fit_to_budget and (args.time_budget is None or args.resume):
        raise ConfigError("--fit-to-budget fits a new run's steps to --time-budget: pass --time-budget SECONDS, "
                          "and leave it off with --resume (a resumed run keeps its step count)")
    s = train(args.data, args.out, max_seconds=args.time_budget, progress=not args.no_progress,
              fit_to_budget=args.fit_to_budget, spec=spec, **kw)
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
        d = read_config_file(config_file)
        if not isinstance(d, dict) or set(d) - {"model", "train"}:
            raise ConfigError(f"--config {config_file}: expected {{\"model\": {{...}}, \"train\": {{...}}}}")
        model_d = {**model_d, **d.get("model", {})}
        train_d = {**train_d, **d.get("train", {})}
        vocab_explicit = "vocab_size" in d.get("model", {})
    mcfg = from_dict(ModelConfig, model_d, where="model config")
    tcfg = from_dict(TrainConfig, train_d, where="train config")
    check_overrides_known(overrides, ("model", mcfg), ("train", tcfg))
    vocab_explicit |= override_given(overrides, "model", "vocab_size")
    mcfg, tcfg = apply_overrides(mcfg, overrides, "model"), apply_overrides(tcfg, overrides, "train")
    if max_steps is not None:
        tcfg = replace(tcfg, max_steps=max_steps)
    return asdict(mcfg), asdict(tcfg), vocab_explicit


def read_config_file(path: str) -> object:
    """The object in a --config file: YAML for .yaml/.yml, else JSON (YAML is a superset of it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read it ({e})") from None
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        import yaml

        from gpt3lab.yaml12 import safe_load
        try:
            return safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {path}: invalid YAML ({str(e).splitlines()[0]})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: invalid JSON ({e}); YAML files must end in .yaml or .yml") from None


def _resume_batch_size(saved: dict, tcfg: TrainConfig, overrides: list[str], world: int) -> TrainConfig:
    """Per-process batch_size for resuming on `world` processes: the saved global micro-batch / world."""
    old_b, old_w = saved.get("train", {}).get("batch_size", tcfg.batch_size), int(saved.get("world_size", 1))
    glob = old_b * old_w
    explicit = override_given(overrides, "train", "batch_size")
    if explicit and tcfg.batch_size * world != glob:
        raise ConfigError(f"--set batch_size={tcfg.batch_size} on {world} process(es) gives a global micro-batch "
                          f"of {tcfg.batch_size * world}, the run used {glob} ({old_w} x {old_b}); drop the "
                          f"setting (batch_size is derived on resume)")
    if glob % world:
        raise ConfigError(f"cannot resume on world size {world}: it does not divide the run's global "
                          f"micro-batch of {glob} sequences ({old_w} processes x batch_size {old_b}); "
                          f"use a world size dividing {glob}")
    return replace(tcfg, batch_size=glob // world)


def check_resume_compatible(saved_model: dict, saved_train: dict, mcfg: ModelConfig, tcfg: TrainConfig,
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


@dataclass
class TrainSpec:
    """What a variant of pretraining changes in `train` (torchtitan's TrainSpec, reduced): gpt3lab.distill."""
    loss_fn: object = None               # a train.loop.LossFn; None: cross-entropy
    model_defaults: dict | None = None   # a new run's model config below --config/--set (None: ModelConfig's)
    init_model: object = None            # init_model(model): a new run's model after its random init
    extra_config: dict | None = None     # more config.json keys
    check_model: object = None           # check_model(model_cfg): refuse a resolved shape before anything runs


@dataclass
class Resolved:
    """Everything `train` decides before building anything: configs, data, and the checkpoint resumed."""
    mcfg: ModelConfig
    tcfg: TrainConfig
    data: Path | None
    tok: object
    ckpt: Path | None


def resolve_run(data_dir, out_dir, *, preset: str | None = None, config_file: str | None = None,
                overrides: list[str] = (), max_steps: int | None = None, resume: bool = False,
                reschedule: bool = False, for_print: bool = False, model_defaults: dict | None = None) -> Resolved:
    """Layer defaults (ModelConfig's, or model_defaults), preset (or the resumed run's configs), config file,
    --set and flags; check them. for_print: --print-config, where --data may be absent (vocab_size then
    stays as configured)."""
    from gpt3lab.data import load_data_tokenizer
    from gpt3lab.presets import get_preset

    out = Path(out_dir)
    overrides = list(overrides)
    ckpt = saved = None
    if resume:
        ckpt = ckpt_io.resume_checkpoint(out)
        saved = ckpt_io.read_config(ckpt)
        model_d, train_d = saved["model"], saved.get("train", {})
        data_dir = data_dir or saved.get("data")
    else:
        if not for_print:
            ckpt_io.new_run_dir(out)
        p = get_preset(preset) if preset else None
        model_d, train_d = (dict(p.model) if p else dict(model_defaults or {})), (dict(p.train) if p else {})
    if data_dir is None and not for_print:
        raise DataError("--data DATA_DIR is required (the prepared data to train on)")
    data = _check_data(data_dir) if data_dir is not None else None
    tok = load_data_tokenizer(data) if data is not None else None
    if preset and resume:
        p = get_preset(preset)
        preset_model = {k: v for k, v in p.model.items() if k != "vocab_size"}   # the data decides vocab
        model_d, train_d = {**model_d, **preset_model}, {**train_d, **p.train}
    model_d, train_d, vocab_explicit = layer_configs(model_d, train_d, config_file, overrides, max_steps)
    if tok is not None and not vocab_explicit and not resume:
        model_d["vocab_size"] = tok.vocab_size
    if tok is not None and model_d["vocab_size"] != tok.vocab_size:
        raise ConfigError(f"model.vocab_size={model_d['vocab_size']} does not match the data's tokenizer "
                          f"{tok.name} (vocab_size {tok.vocab_size}) in {data}; drop the setting or "
                          f"prepare the data with a matching tokenizer")
    mcfg, tcfg = ModelConfig(**model_d), TrainConfig(**train_d)
    tcfg = settle_train_config(mcfg, tcfg, overrides, (saved, ckpt) if resume else None, reschedule,
                               check_memory=not for_print)
    return Resolved(mcfg, tcfg, data, tok, ckpt)


def settle_train_config(mcfg: ModelConfig, tcfg: TrainConfig, overrides: list[str] = (),
                        resumed: tuple[dict, Path] | None = None, reschedule: bool = False,
                        check_memory: bool = True, frozen_weights: bool = False) -> TrainConfig:
    """The last step of resolving a run's configs, the same for `train` and `finetune`. On resume
    (resumed = (saved config.json, checkpoint)): the run's global micro-batch is kept on this world size,
    only RESUME_MAY_CHANGE settings may differ, and a new max_steps keeps the LR schedule's shape unless
    reschedule. Then the batch must be whole micro-steps of this world size, and (check_memory) the run's
    estimated memory must fit the device (gpt3lab.train.fits; frozen_weights: LoRA, no states for W)."""
    from gpt3lab.train.distributed import local_device
    from gpt3lab.train.fits import check_fits
    from gpt3lab.train.schedule import check_world_size

    world = data_parallel_size(tcfg)
    if resumed is not None:
        saved, ckpt = resumed
        tcfg = _resume_batch_size(saved, tcfg, list(overrides), world)
        check_resume_compatible(saved["model"], saved.get("train", {}), mcfg, tcfg, ckpt)
        tcfg = _resume_schedule(saved, tcfg, mcfg.context, world, reschedule)
    check_world_size(tcfg, mcfg.context, world)
    if check_memory:
        check_fits(mcfg, tcfg, world, local_device(tcfg.device), frozen_weights)
    return tcfg


def run_trainer(trainer, dist, resume_from: Path | None = None, before_fit=None) -> dict:
    """Resume `trainer` from a checkpoint (if given) and train it (before_fit() runs just before: the start-up
    summary); the process group is closed whatever happens, a run already at its max_steps included. Returns
    the last log record."""
    try:
        if resume_from is not None:
            trainer.resume(resume_from)
            if trainer.step >= trainer.cfg.max_steps:
                raise ConfigError(f"{resume_from} is already at step {trainer.step} >= max_steps "
                                  f"{trainer.cfg.max_steps}; pass a larger --max-steps to train further")
        if before_fit is not None:
            before_fit()
        return trainer.fit()
    finally:
        dist.close()


def _resume_schedule(saved: dict, tcfg: TrainConfig, context: int, world: int, reschedule: bool) -> TrainConfig:
    """A new max_steps on --resume would re-stretch the LR schedule (and GPT-3's token schedules) under the
    run's feet: keep the saved shape unless --reschedule, and say which happened."""
    import sys

    from gpt3lab.train.schedule import pin_schedule

    old_steps = saved.get("train", {}).get("max_steps", tcfg.max_steps)
    if old_steps == tcfg.max_steps:
        return tcfg
    say = int(os.environ.get("RANK", "0")) == 0          # torchrun: one warning, not one per rank
    if reschedule:
        if say:
            print(f"gpt3lab: warning: --max-steps {tcfg.max_steps} (the run had {old_steps}): --reschedule "
                  f"stretches the LR schedule over {tcfg.max_steps} steps", file=sys.stderr)
        return tcfg
    old = replace(tcfg, max_steps=old_steps)
    pinned = pin_schedule(old, tcfg, context, world)
    if pinned != tcfg and say:
        print(f"gpt3lab: warning: --max-steps {tcfg.max_steps} differs from the run's {old_steps}; the LR schedule "
              f"keeps its shape (it decays as planned for {old_steps} steps, then stays at its floor); pass "
              f"--reschedule to stretch it over {tcfg.max_steps} steps", file=sys.stderr)
    return pinned


def train(data_dir, out_dir, *, preset: str | None = None, config_file: str | None = None,
          overrides: list[str] = (), max_steps: int | None = None, resume: bool = False,
          max_seconds: float | None = None, progress: bool = True, reschedule: bool = False,
          fit_to_budget: bool = False, step_ceiling: int | None = None, spec: TrainSpec | None = None) -> dict:
    """Build (or resume) a run and train it; returns a summary (checkpoint, step, loss, val_bpb, ...).

    fit_to_budget (with max_seconds): the run's max_steps is only a ceiling; the loop fits the step count
    to the budget as it goes (train/budget.py). step_ceiling: the same, starting from max_steps as a first
    estimate (e.g. a probe's) with this ceiling. spec: a variant of pretraining (e.g. distillation)."""
    from gpt3lab.data import WindowLoader
    from gpt3lab.train.distributed import from_env, local_device
    from gpt3lab.train.loop import RunInfo, Trainer

    spec = spec or TrainSpec()
    r = resolve_run(data_dir, out_dir, preset=preset, config_file=config_file, overrides=overrides,
                    max_steps=max_steps, resume=resume, reschedule=reschedule, model_defaults=spec.model_defaults)
    out, mcfg, tcfg, data, tok, ckpt = Path(out_dir), r.mcfg, r.tcfg, r.data, r.tok, r.ckpt
    if spec.check_model is not None:
        spec.check_model(mcfg)
    if resume and spec.loss_fn is None and "distill" in ckpt_io.read_config(ckpt):   # resumed without its teacher
        raise CheckpointError(f"{ckpt} is a distillation run: resume it with `gpt3lab distill --out {out} --resume`")
    device = local_device(tcfg.device)
    dist = from_env(tcfg.parallel, device, tcfg.tensor_parallel)
    torch.manual_seed(tcfg.seed)   # the same init on every rank (DDP broadcasts rank 0's anyway)
    if resume and not ckpt_io.is_sharded(ckpt):      # sharded: Trainer.resume loads into the sharded model
        model = ckpt_io.load_model(ckpt).train()
    else:
        from gpt3lab.model import GPT
        model = GPT(mcfg)
        if spec.init_model is not None and not resume:
            spec.init_model(model)
    kw = dict(seed=tcfg.seed, rank=dist.dp_rank, world_size=dist.dp_size)
    train_data = WindowLoader(data, "train", mcfg.context, tcfg.batch_size, **kw)
    eval_data = _val_loader(data, mcfg.context, tcfg.batch_size, kw)
    if fit_to_budget and step_ceiling is None:
        step_ceiling = tcfg.max_steps
    extra = {"data": str(data.resolve()), **(spec.extra_config or {})}
    info = RunInfo(out_dir=out, tokenizer=tok, extra_config=extra, progress=progress,
                   max_seconds=max_seconds, step_ceiling=step_ceiling if max_seconds is not None else None)
    trainer = Trainer(model, mcfg, tcfg, train_data, eval_data, info=info, dist=dist, device=device,
                      loss_fn=spec.loss_fn)

    def summary() -> None:          # after a resume, so it shows the step the run continues from
        if dist.is_main:
            import sys

            from gpt3lab.launcher import chosen
            from gpt3lab.train.summary import summary_lines
            print("\n".join(summary_lines(trainer, out, data, chosen())), file=sys.stderr, flush=True)
    record = run_trainer(trainer, dist, ckpt if resume else None, before_fit=summary)
    return {"run_dir": str(out), "checkpoint": str(ckpt_io.step_dir(out, trainer.step)), "step": trainer.step,
            "tokens": trainer.tokens, "loss": record.get("loss"), "val_loss": record.get("val_loss"),
            "val_bpb": record.get("val_bpb"), "seconds": record.get("seconds"),
            "params": model.num_params(), "model": asdict(mcfg), "train": asdict(tcfg)}


def data_parallel_size(tcfg: TrainConfig) -> int:
    """Data-parallel replicas of this launch: WORLD_SIZE / train.tensor_parallel."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % tcfg.tensor_parallel:
        raise ConfigError(f"train.tensor_parallel={tcfg.tensor_parallel} does not divide the {world} launched "
                          f"process(es); launch a multiple of it (torchrun --nproc_per_node)")
    return world // tcfg.tensor_parallel


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
