"""`gpt3lab finetune --from CHECKPOINT --data FILE.jsonl --out RUN_DIR [--method full|lora] ...`

Full or LoRA fine-tuning through the one training loop (`gpt3lab.train.loop.Trainer`): the same schedule,
clipping, accumulation, checkpoints, exact resume and DDP as pretraining. Settings are layered as in
`gpt3lab train`: FINETUNE_DEFAULTS[method] < --config FILE < --set < flags. model.* comes from the base
checkpoint; only model.dropout may be changed.

RUN_DIR/checkpoints/step_N   training checkpoints (LoRA: base + adapter weights, config.json "lora" key)
RUN_DIR/adapter/             LoRA only: adapter.safetensors + adapter_config.json (+ tokenizer)
RUN_DIR/merged/              LoRA with --merge: a plain checkpoint with the adapters folded into W
RUN_DIR/model/               full fine-tune with train.parallel=fsdp: checkpoints/ are sharded (every rank
                             writes its own shards, resumable on any number of processes); this is the
                             final one exported to a single file (as `gpt3lab export` would)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.argtypes import float_range, positive_float, positive_int
from gpt3lab.adapters import save_adapter
from gpt3lab.convert import is_hf_dir
from gpt3lab.loader import load, load_base
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.errors import CheckpointError, ConfigError, DataError
from gpt3lab.model import lora

FINETUNE_DEFAULTS = {
    "full": dict(lr=1e-4, warmup_steps=10, max_steps=200, batch_size=8, weight_decay=0.1, eval_every=50,
                 eval_batches=10, save_every=100, log_every=10),
    # adapters start at zero and are few: a larger LR; no decay pulling them back to zero
    "lora": dict(lr=1e-3, warmup_steps=10, max_steps=200, batch_size=8, weight_decay=0.0, eval_every=50,
                 eval_batches=10, save_every=100, log_every=10),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="base", metavar="CHECKPOINT", help="base: checkpoint or run dir, or a "
                   "Hugging Face GPT-2 dir (not needed with --resume)")
    p.add_argument("--data", metavar="FILE", help="JSONL of prompt/completion, chat messages or Alpaca "
                   "instruction/input/output records, or a plain-text file")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--val-data", metavar="FILE", help="validation file (default: split --val-fraction off)")
    p.add_argument("--val-fraction", type=float_range(0.0, 1.0, hi_open=True), default=0.1, help="seeded validation split (default 0.1)")
    p.add_argument("--method", choices=("full", "lora"), default="full",
                   help="full: train every weight; lora: train low-rank adapters only, the base frozen")
    p.add_argument("--lora-rank", type=positive_int, default=8, help="LoRA: rank r of each adapter")
    p.add_argument("--lora-alpha", type=positive_float, default=16.0, help="LoRA: scale alpha (update x alpha/r)")
    p.add_argument("--lora-dropout", type=float_range(0.0, 1.0, hi_open=True), default=0.0,
                   help="LoRA: dropout on the adapter's input")
    p.add_argument("--lora-targets", default="c_attn,c_proj", help=f"comma list of {', '.join(lora.ALL_TARGETS)}")
    p.add_argument("--pad", action="store_true", help="one example per row (default: pack whole examples)")
    p.add_argument("--include-prompt", action="store_true", help="take the loss on prompt tokens too")
    p.add_argument("--strict", action="store_true", help="error on examples longer than the context "
                   "(default: skip them and report the count)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its newest checkpoint")
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--reschedule", action="store_true",
                   help="on --resume with a new --max-steps, stretch the LR schedule to it (default: keep "
                        "the run's schedule), as `gpt3lab train --reschedule`")
    p.add_argument("--config", metavar="FILE", help='JSON or YAML file: {"model": {...}, "train": {...}}')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set train.lr=3e-4")
    p.add_argument("--merge", action="store_true", help="LoRA: also write RUN_DIR/merged (adapters folded in)")
    p.add_argument("--time-budget", type=positive_float, metavar="SECONDS")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    lcfg = None
    if args.method == "lora":
        lcfg = lora.LoRAConfig(args.lora_rank, args.lora_alpha, args.lora_dropout,
                               tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()))
    s = finetune(args.base, args.data, args.out, method=args.method, lora_cfg=lcfg, val_data=args.val_data,
                 val_fraction=args.val_fraction, pack=not args.pad, include_prompt=args.include_prompt,
                 strict=args.strict, resume=args.resume, max_steps=args.max_steps, reschedule=args.reschedule,
                 config_file=args.config,
                 overrides=args.set, merge=args.merge, max_seconds=args.time_budget,
                 progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    val = f", val loss {s['val_loss']:.4f}" if s.get("val_loss") is not None else ""
    print(f"{s['result']}: step {s['step']}, loss {s['loss']:.4f}{val}")
    return 0


def _base_model(base, overrides: list[str], config_file, max_steps, method: str):
    """(model, tokenizer, ModelConfig, TrainConfig, resolved base path) for a new run."""
    from gpt3lab.model import GPT
    from gpt3lab.train.cli import layer_configs, settle_train_config

    if base is None:
        raise ConfigError("--from CHECKPOINT is required (the model to fine-tune)")
    base_path = Path(base)
    if not is_hf_dir(base_path):
        base_path = ckpt_io.resolve(base_path)
    model, tok = load_base(base_path)
    model_d, train_d, _ = layer_configs(asdict(model.config), dict(FINETUNE_DEFAULTS[method]), config_file,
                                        overrides, max_steps)
    changed = sorted(k for k, v in model_d.items() if getattr(model.config, k) != v and k != "dropout")
    if changed:
        raise ConfigError(f"model.{changed[0]}: the model's shape comes from the base checkpoint {base}; "
                          f"only model.dropout may be set when fine-tuning")
    mcfg, tcfg = ModelConfig(**model_d), TrainConfig(**train_d)
    tcfg = settle_train_config(mcfg, tcfg, overrides, frozen_weights=method == "lora")
    if mcfg.dropout != model.config.dropout:       # rebuild so every dropout module takes the new rate
        state = model.state_dict()
        model = GPT(mcfg)
        model.load_state_dict(state)
    return model.train(), tok, mcfg, tcfg, base_path.resolve()


def _resumed_model(out: Path, overrides, config_file, max_steps, reschedule: bool):
    """(model, tokenizer, ModelConfig, TrainConfig, checkpoint, saved finetune settings) to resume, through
    train's one resume path (settle_train_config)."""
    from gpt3lab.model import GPT
    from gpt3lab.train.cli import layer_configs, settle_train_config

    ckpt = ckpt_io.resume_checkpoint(out)
    saved = ckpt_io.read_config(ckpt)
    if "finetune" not in saved:
        raise CheckpointError(f"--resume: {ckpt} is not a fine-tuning checkpoint; use `gpt3lab train --resume`")
    model_d, train_d, _ = layer_configs(saved["model"], saved.get("train", {}), config_file, overrides, max_steps)
    mcfg, tcfg = ModelConfig(**model_d), TrainConfig(**train_d)
    tcfg = settle_train_config(mcfg, tcfg, overrides, (saved, ckpt), reschedule, frozen_weights="lora" in saved)
    if ckpt_io.is_sharded(ckpt):     # FSDP: Trainer.resume loads the shards into the (sharded) model
        model, tok = GPT(mcfg), ckpt_io.load_tokenizer(ckpt)
    else:
        model, tok = load(ckpt)
    return model.train(), tok, mcfg, tcfg, ckpt, saved


def finetune(base, data, out_dir, *, method: str = "full", lora_cfg: lora.LoRAConfig | None = None,
             val_data=None, val_fraction: float = 0.1, pack: bool = True, include_prompt: bool = False,
             strict: bool = False, resume: bool = False, max_steps: int | None = None, config_file=None,
             overrides=(), merge: bool = False, max_seconds: float | None = None, progress: bool = True,
             log=lambda m: None, reschedule: bool = False) -> dict:
    """Fine-tune `base` on `data` into `out_dir` (or resume it); returns a summary dict."""
    from gpt3lab.finetune.data import load_datasets
    from gpt3lab.train.distributed import from_env, local_device
    from gpt3lab.train.cli import run_trainer
    from gpt3lab.train.loop import RunInfo, Trainer

    out, overrides = Path(out_dir), list(overrides)
    if resume:
        model, tok, mcfg, tcfg, ckpt, saved = _resumed_model(out, overrides, config_file, max_steps, reschedule)
        ft = saved["finetune"]
        lora_cfg = lora.LoRAConfig.from_dict(saved["lora"], f"{ckpt}/config.json lora") if "lora" in saved else None
        data = data or ft["data"]
        template = saved.get("chat_template")
    else:
        if method not in FINETUNE_DEFAULTS:
            raise ConfigError(f"--method {method!r} must be full or lora")
        ckpt_io.new_run_dir(out)
        if merge and method != "lora":
            raise ConfigError("--merge applies to --method lora (a full fine-tune's checkpoint is already merged)")
        if data is None:
            raise DataError("--data FILE is required (prompt/completion .jsonl or a plain-text file)")
        lora_cfg = (lora_cfg or lora.LoRAConfig()) if method == "lora" else None
        model, tok, mcfg, tcfg, base_path = _base_model(base, overrides, config_file, max_steps, method)
        template = _base_chat_template(base_path)
        ft = {"method": method, "base": str(base_path), "base_fingerprint": lora.fingerprint(model),
              "data": _resolved(data), "val_data": None if val_data is None else _resolved(val_data),
              "val_fraction": val_fraction, "pack": pack, "include_prompt": include_prompt, "strict": strict}
        torch.manual_seed(tcfg.seed)   # adapter init and dropout: the same on every rank and every rerun
        if lora_cfg is not None:
            lora.inject_lora(model, lora_cfg)
    if lora_cfg is not None and (tcfg.parallel == "fsdp" or tcfg.async_checkpoint):
        # FSDP splits c_attn into q, k, v, dropping its LoRA wrapper; adapters are small: DDP suffices
        raise ConfigError("--method lora saves single-file checkpoints: use train.parallel=ddp (not fsdp) and "
                          "train.async_checkpoint=false; FSDP is for full fine-tunes")
    if tcfg.tensor_parallel > 1:       # LoRA wraps the layers TP would shard; full fine-tunes: use FSDP
        raise ConfigError(f"train.tensor_parallel={tcfg.tensor_parallel} is for `gpt3lab train`; fine-tune with "
                          f"train.parallel=ddp or fsdp (tensor_parallel=1)")
    device = local_device(tcfg.device)
    dist = from_env(tcfg.parallel, device)
    train, val, stats = load_datasets(
        data, tok, mcfg.context, tcfg.batch_size, val_data=ft["val_data"], val_fraction=ft["val_fraction"],
        seed=tcfg.seed, pack=ft["pack"], include_prompt=ft["include_prompt"], strict=ft["strict"],
        rank=dist.rank, world_size=dist.world_size, chat_template=template)
    trainable, total = lora.param_counts(model)
    _report(log, stats, trainable, total, ft["method"])
    extra = {"finetune": ft, **({"lora": lora_cfg.to_dict()} if lora_cfg is not None else {}),
             **({"chat_template": template} if template else {})}
    info = RunInfo(out_dir=out, tokenizer=tok, extra_config=extra, progress=progress, max_seconds=max_seconds)
    trainer = Trainer(model, mcfg, tcfg, train, val, info=info, dist=dist, device=device)
    record = run_trainer(trainer, dist, ckpt if resume else None)
    result = _export(trainer, out, ft, lora_cfg, tok, merge, log) if dist.is_main else None
    return {"run_dir": str(out), "result": str(result or ckpt_io.step_dir(out, trainer.step)),
            "checkpoint": str(ckpt_io.step_dir(out, trainer.step)), "step": trainer.step,
            "loss": record.get("loss"), "val_loss": record.get("val_loss"), "trainable_params": trainable,
            "total_params": total, "data": asdict(stats), "model": asdict(mcfg), "train": asdict(tcfg)}


def _base_chat_template(base_path: Path) -> str | None:
    """The base's chat template (gpt3lab checkpoint config or HF tokenizer_config.json); None: the default.
    Chat data is rendered with it, and the fine-tuned checkpoints store it, so serving renders the same."""
    if is_hf_dir(base_path):
        from gpt3lab.chat import select_template
        from gpt3lab.convert import hf_chat_template
        return select_template(hf_chat_template(base_path).get("chat_template"), f"{base_path}/tokenizer_config.json")
    return ckpt_io.chat_template_of(base_path)


def _resolved(path) -> str:
    """Absolute form of a data path, so --resume works from any working directory."""
    return str(Path(path).resolve())


def _report(log, stats, trainable: int, total: int, method: str) -> None:
    skipped = (f"; skipped {stats.skipped_too_long} example(s) longer than the context (lines "
               f"{', '.join(map(str, stats.skipped_lines[:10]))}{'…' if len(stats.skipped_lines) > 10 else ''}; "
               f"--strict makes this an error)") if stats.skipped_too_long else ""
    log(f"data {stats.path}: {stats.train_examples} train / {stats.val_examples} val examples in "
        f"{stats.train_rows} / {stats.val_rows} rows, {stats.target_tokens} train target tokens{skipped}")
    log(f"{method}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.3f}%)")


def _export(trainer, out: Path, ft: dict, lora_cfg, tok, merge: bool, log) -> Path | None:
    """LoRA: RUN/adapter (and RUN/merged with merge); full with sharded (FSDP) checkpoints: RUN/model, the
    final weights in one file. Returns what a user should load (None: the last checkpoint)."""
    if lora_cfg is None:
        last = ckpt_io.step_dir(out, trainer.step)
        if not ckpt_io.is_sharded(last):
            return None
        from gpt3lab.train.sharded_checkpoint import export
        dest = export(last, out / "model")    # the full model in one process, as the base was at the start
        log(f"model: {dest} (single-file export of the sharded {last.name})")
        return dest
    model = trainer.model
    dest = save_adapter(out / "adapter", model, lora_cfg, ft["base"], ft["base_fingerprint"], tok,
                             extra={"step": trainer.step})
    log(f"adapter: {dest} ({sum(v.numel() for v in lora.lora_state(model).values()):,} parameters)")
    if merge:
        merged = lora.merge_lora(_clone(model)).eval()
        template = ckpt_io.read_config(ckpt_io.step_dir(out, trainer.step)).get("chat_template")
        dest = ckpt_io.save_checkpoint(out / "merged", merged, trainer.model_cfg, tok,
                                       extra={"finetune": {**ft, "merged_from_step": trainer.step},
                                              **({"chat_template": template} if template else {})})
        log(f"merged checkpoint: {dest}")
    return dest


def _clone(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    m = copy.deepcopy(model).cpu()
    m.lm_head.weight = m.transformer.wte.weight
    return m


__all__ = ["add_arguments", "run", "finetune", "FINETUNE_DEFAULTS"]
