"""The teacher of a distillation run: loading it, checking it speaks the student's tokens, and starting a
student from its layers (DistilBERT / DistilGPT2: every other layer of the teacher)."""
from __future__ import annotations

from pathlib import Path

import torch

from gpt3lab.errors import CheckpointError, ConfigError, UserError

# what must be equal for a student to take the teacher's layers as they are
SAME_WIDTH = ("vocab_size", "d_model", "n_head", "d_head", "d_ff", "bias", "layer_norm_eps")


def load_teacher(path: str | Path, precision: str = "auto", keep_state: bool = False):
    """(teacher in eval mode without gradients, tokenizer, fingerprint of its weights as stored, their state
    dict as stored when keep_state else None).

    Anything gpt3lab.load reads (checkpoint, run dir, LoRA adapter, HF GPT-2 dir); adapters are merged.
    precision "bf16"/"int8" prepares the teacher for inference (gpt3lab.model.quant) after the fingerprint.
    """
    from gpt3lab.loader import load
    from gpt3lab.model.lora import fingerprint, merge_lora
    from gpt3lab.model.quant import prepare_for_inference

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"--teacher {p}: no such checkpoint or run directory")
    try:
        model, tok = load(p)
    except UserError as e:
        raise CheckpointError(f"--teacher {p}: not a model checkpoint ({e})") from None
    merge_lora(model)
    model.eval().requires_grad_(False)
    # the tensors as loaded: bf16/int8 preparation below replaces the modules' tensors, not these
    state = model.state_dict() if keep_state else None
    digest = fingerprint(model)
    if precision in ("bf16", "int8"):
        prepare_for_inference(model, precision)
    return model, tok, digest, state


def check_same_tokenizer(teacher_tok, data_tok, teacher: str, data: str) -> None:
    """ConfigError unless both tokenizers give the same ids to the same text (ranks, regex, specials)."""
    same = (teacher_tok.ranks == data_tok.ranks and teacher_tok.pattern == data_tok.pattern
            and teacher_tok.specials == data_tok.specials)
    if not same:
        raise ConfigError(f"the teacher {teacher} uses tokenizer {teacher_tok.name!r} (vocab {teacher_tok.vocab_size}) "
                          f"but the data {data} was prepared with {data_tok.name!r} (vocab {data_tok.vocab_size}); "
                          f"teacher and student must share one tokenizer: prepare the data with the teacher's "
                          f"(gpt3lab prepare SOURCE --out DIR --tokenizer TEACHER_CHECKPOINT_DIR)")


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer for each student layer, evenly spaced from the first: 12 -> 6 gives 0, 2, 4, ..., 10."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def init_from_teacher(student: torch.nn.Module, teacher_state: dict, teacher_cfg) -> list[int]:
    """Copy the teacher's embeddings, final LayerNorm and layers layer_map(...) into `student`, in place.

    The student must have the teacher's width (SAME_WIDTH) and at most its layers; a shorter context takes
    the first positions of the teacher's. Returns the teacher layers used."""
    cfg = student.config
    bad = [f"{k} {getattr(teacher_cfg, k)} vs {getattr(cfg, k)}" for k in SAME_WIDTH
           if getattr(teacher_cfg, k) != getattr(cfg, k)]
    if bad or cfg.n_layer > teacher_cfg.n_layer or cfg.context > teacher_cfg.context:
        why = "; ".join(bad) or (f"n_layer {cfg.n_layer} > {teacher_cfg.n_layer}" if cfg.n_layer > teacher_cfg.n_layer
                                 else f"context {cfg.context} > {teacher_cfg.context}")
        raise ConfigError(f"--init-from-teacher needs a student of the teacher's width with at most its layers "
                          f"and context (teacher vs student: {why}); drop --init-from-teacher or match the shape")
    layers = layer_map(teacher_cfg.n_layer, cfg.n_layer)
    with torch.no_grad():
        for key, param in student.state_dict().items():
            src = key
            if key.startswith("transformer.h."):
                i, rest = key.removeprefix("transformer.h.").split(".", 1)
                src = f"transformer.h.{layers[int(i)]}.{rest}"
            value = teacher_state[src]
            if key == "transformer.wpe.weight":
                value = value[:cfg.context]
            param.copy_(value)          # state_dict shares storage with the parameters (tied lm_head included)
    return layers
