"""The distillation loss: a plug-in of the one training loop (train.loop.LossFn).

    loss = alpha * T^2 * KL + (1 - alpha) * cross-entropy(student, data)

KL is taken between the teacher's and the student's next-token distributions at temperature T, per
position, averaged over the positions the cross-entropy counts (targets != -100):

    forward  KL(p_teacher,T || p_student,T)   Hinton et al. 2015; DistilBERT / DistilGPT2
    reverse  KL(p_student,T || p_teacher,T)   MiniLLM's objective (Gu et al. 2023), here per token on the
                                             data's prefixes (MiniLLM optimises it over the student's own
                                             samples with a policy gradient)

T^2 keeps the gradient of the soft term on the scale of the hard one as T changes (Hinton et al.).
The teacher runs in eval mode without gradients; its precision is its own ("bf16" weights, CPU "int8")
or, with "auto", whatever autocast the training step runs under.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from gpt3lab.errors import ConfigError

KD_LOSSES = ("forward", "reverse")
TEACHER_PRECISIONS = ("auto", "fp32", "bf16", "int8")


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  kind: str = "forward", mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL between softmax(teacher / T) and softmax(student / T) over positions (mask: which count).

    logits (..., V); kind "forward" is KL(teacher || student), "reverse" KL(student || teacher). fp32 math;
    gradients flow to the student only.
    """
    s = student_logits.float() / temperature                                           # (..., V)
    with torch.no_grad():
        log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        p_t = log_t.exp()
    if kind == "forward":
        # KL(t || s) = H(t, s) - H(t): a cross-entropy with soft targets (gradient softmax(s) - p_t) less the
        # teacher's entropy, which has no gradient; fewer passes over (..., V) than through kl_div
        soft_ce = F.cross_entropy(s.flatten(0, -2), p_t.flatten(0, -2), reduction="none").view(s.shape[:-1])
        kl = soft_ce + (p_t * log_t).sum(-1)                                           # (...)
    else:
        log_s = F.log_softmax(s, dim=-1)
        kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    if mask is None:
        return kl.mean()
    return (kl * mask).sum() / mask.sum().clamp(min=1)


class DistillLoss:
    """alpha * T^2 * KL(teacher, student) + (1 - alpha) * CE, for `Trainer(loss_fn=...)`; logs both parts.

    `teacher` is any model with `teacher(x) -> (logits, _)` over the student's vocabulary; it is put in
    eval mode with gradients off, and moved to the batches' device on first use.
    """

    log_fields = ("ce_loss", "kd_loss")

    def __init__(self, teacher: torch.nn.Module, alpha: float = 0.5, temperature: float = 2.0,
                 kind: str = "forward", teacher_precision: str = "auto"):
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"--alpha {alpha}: the weight of the distillation term must be in [0, 1]")
        if not temperature > 0:
            raise ConfigError(f"--temperature {temperature}: must be > 0 (1 = the teacher's own distribution)")
        if kind not in KD_LOSSES:
            raise ConfigError(f"--kd-loss {kind!r}: use one of {', '.join(KD_LOSSES)}")
        if teacher_precision not in TEACHER_PRECISIONS:
            raise ConfigError(f"--teacher-precision {teacher_precision!r}: use one of {', '.join(TEACHER_PRECISIONS)}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.kind, self.precision = alpha, temperature, kind, teacher_precision

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor):
        if self.alpha == 0.0:       # no distillation term: the teacher's forward and the KL would cost 2.2x the step
            _, ce = model(x, y)
            return ce, {"ce_loss": ce}
        t_logits = self.teacher_logits(x)                                                # (B, T, Vt)
        logits, ce = model(x, y)                                                         # (B, T, V), ()
        if t_logits.size(-1) < logits.size(-1):
            raise ConfigError(f"the teacher predicts {t_logits.size(-1)} token ids and the student "
                              f"{logits.size(-1)}; drop the student's model.vocab_size setting")
        # a teacher padded past the shared tokenizer: its extra ids never occur, compare the real ones
        t_logits = t_logits[..., :logits.size(-1)]
        kd = kd_divergence(logits, t_logits, self.temperature, self.kind, mask=y != -100)
        loss = (1.0 - self.alpha) * ce + self.alpha * self.temperature ** 2 * kd
        return loss, {"ce_loss": ce, "kd_loss": kd}

    def check_student(self, cfg) -> None:
        """Refuse a student whose windows the teacher cannot read, before the run starts."""
        self._check_context(cfg.context)

    def _check_context(self, T: int) -> None:
        if T > self.teacher.config.context:
            raise ConfigError(f"the student trains on {T}-token windows, longer than the teacher's context "
                              f"of {self.teacher.config.context}; set model.context={self.teacher.config.context}")

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for x (B, T) -> (B, T, V), at the teacher's precision."""
        self._check_context(x.size(1))
        self._to(x.device)
        # "auto": the step's autocast applies; otherwise the teacher's own dtype decides, autocast off
        ctx = (contextlib.nullcontext() if self.precision == "auto"
               else torch.autocast(x.device.type, enabled=False))
        with ctx:
            logits, _ = self.teacher(x)
        return logits

    def _to(self, device: torch.device) -> None:
        current = self.teacher.transformer.wte.weight.device
        if current == device:
            return
        if self.precision == "int8":
            raise ConfigError(f"--teacher-precision int8 runs on CPU only and the student trains on {device}; "
                              f"use --teacher-precision bf16 there")
        self.teacher.to(device)
