"""`gpt3lab distill --teacher CKPT --data DATA_DIR --out RUN_DIR [--preset P | --config FILE | --set ...]
[--alpha A] [--temperature T] [--kd-loss forward|reverse] [--teacher-precision auto|fp32|bf16|int8]
[--init-from-teacher]`: train a (smaller) student on the data against the teacher's predictions.

It is `gpt3lab train` with another loss (gpt3lab.distill.loss) and a teacher: the same flags, configs,
schedule, time budgets, torchrun (DDP/FSDP: each rank holds a replica of the teacher), exact resume
and checkpoints (generate, serve, convert load them as any other). The student's model config starts
from the teacher's (then --preset, --config, --set apply); the teacher's tokenizer must be the data's.
config.json's "distill" key records the teacher (path and fingerprint) and the settings: --resume takes
them from there, reloads the teacher and refuses a teacher whose weights changed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from gpt3lab import checkpoint as ckpt_io
from gpt3lab.argtypes import float_range, positive_float
from gpt3lab.distill.loss import KD_LOSSES, TEACHER_PRECISIONS, DistillLoss
from gpt3lab.distill.teacher import check_same_tokenizer, init_from_teacher, load_teacher
from gpt3lab.errors import CheckpointError, ConfigError
from gpt3lab.train import cli as train_cli

DEFAULTS = {"alpha": 0.5, "temperature": 2.0, "kd_loss": "forward", "teacher_precision": "auto",
            "init_from_teacher": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", metavar="CKPT", help="the teacher: checkpoint, run dir, LoRA adapter or HF GPT-2 "
                   "dir (on --resume: the run's)")
    train_cli.add_arguments(p)
    p.add_argument("--alpha", type=float_range(0.0, 1.0), help="weight of the distillation term; 1 - alpha "
                   f"weighs the data's cross-entropy (default {DEFAULTS['alpha']})")
    p.add_argument("--temperature", type=positive_float, help="softmax temperature of both distributions in "
                   f"the KL; the term is scaled by T^2 (default {DEFAULTS['temperature']})")
    p.add_argument("--kd-loss", choices=KD_LOSSES, help="forward: KL(teacher || student) (Hinton, DistilGPT2); "
                   "reverse: KL(student || teacher) (MiniLLM) (default forward)")
    p.add_argument("--teacher-precision", choices=TEACHER_PRECISIONS, help="auto: the training step's (bf16 "
                   "under train.precision=bf16, else fp32); fp32; bf16 weights; int8 weights (CPU only) (default auto)")
    p.add_argument("--init-from-teacher", action="store_true", default=None, help="start the student (same width, "
                   "fewer layers) from the teacher's embeddings and evenly spaced layers (0, 2, 4, ... for half)")


def run(args: argparse.Namespace) -> int:
    spec = distill_spec(args.teacher, args.data, args.out, resume=args.resume, alpha=args.alpha,
                        temperature=args.temperature, kd_loss=args.kd_loss, teacher_precision=args.teacher_precision,
                        init_from_teacher=args.init_from_teacher)
    return train_cli.run(args, spec=spec)


def distill(teacher, data_dir, out_dir, *, resume: bool = False, alpha: float | None = None,
            temperature: float | None = None, kd_loss: str | None = None, teacher_precision: str | None = None,
            init_from_teacher: bool | None = None, **train_kw) -> dict:
    """Distil `teacher` into a new student in `out_dir` (or resume it); train_kw as gpt3lab.train.cli.train
    (preset, overrides, max_steps, max_seconds, ...). Settings left None: DEFAULTS, or the run's on resume."""
    spec = distill_spec(teacher, data_dir, out_dir, resume=resume, alpha=alpha, temperature=temperature,
                        kd_loss=kd_loss, teacher_precision=teacher_precision, init_from_teacher=init_from_teacher)
    return train_cli.train(data_dir, out_dir, resume=resume, spec=spec, **train_kw)


def distill_spec(teacher, data_dir, out_dir, *, resume: bool = False, **given) -> train_cli.TrainSpec:
    """The TrainSpec of a distillation run: its loss (with the teacher loaded), the teacher's model config as
    the student's defaults, the optional init from the teacher, and config.json's "distill" record."""
    given = {k: v for k, v in given.items() if v is not None}
    if resume:
        settings, teacher, data_dir = _resumed_settings(out_dir, teacher, data_dir, given)
    else:
        if teacher is None:
            raise ConfigError("--teacher CKPT is required (the model whose predictions the student learns)")
        settings = {**DEFAULTS, **given}
    model, tok, digest, state = load_teacher(teacher, settings["teacher_precision"],
                                             keep_state=settings["init_from_teacher"] and not resume)
    if resume and digest != settings["teacher_fingerprint"]:
        raise CheckpointError(f"--resume: the teacher {teacher} is not the one the run started with (its weights "
                              f"changed); restore that teacher or start a new run")
    if data_dir is not None:
        from gpt3lab.data import load_data_tokenizer
        check_same_tokenizer(tok, load_data_tokenizer(data_dir), teacher, data_dir)
    loss = DistillLoss(model, settings["alpha"], settings["temperature"], settings["kd_loss"],
                       settings["teacher_precision"])

    def init(student) -> None:
        layers = init_from_teacher(student, state, model.config)
        print(f"distill: student initialised from the teacher's embeddings and layers {layers}", file=sys.stderr)

    record = {**settings, "teacher": str(Path(teacher).resolve()), "teacher_fingerprint": digest}
    return train_cli.TrainSpec(loss_fn=loss, model_defaults=asdict(model.config),
                               init_model=init if state is not None else None, extra_config={"distill": record},
                               check_model=loss.check_student)


def _resumed_settings(out_dir, teacher, data_dir, given: dict) -> tuple[dict, str, str | None]:
    """(the run's distill settings, its teacher, the data dir) for --resume; flags may only repeat them."""
    ckpt = ckpt_io.resume_checkpoint(out_dir)
    saved = ckpt_io.read_config(ckpt)
    settings = saved.get("distill")
    if not isinstance(settings, dict) or not set(DEFAULTS) | {"teacher", "teacher_fingerprint"} <= set(settings):
        raise CheckpointError(f"--resume: {ckpt} is not a distillation checkpoint; resume it with `gpt3lab train "
                              f"--resume` (or `gpt3lab finetune --resume`)")
    if teacher is not None:
        given["teacher"] = str(Path(teacher).resolve())
    changed = [f"--{k.replace('_', '-')} {v} (the run's: {settings[k]})" for k, v in given.items() if v != settings[k]]
    if changed:
        raise ConfigError(f"--resume keeps the run's distillation settings: {'; '.join(changed)}; drop the flag "
                          f"or start a new run")
    return settings, settings["teacher"], data_dir or saved.get("data")


__all__ = ["add_arguments", "run", "distill", "distill_spec", "DEFAULTS"]
