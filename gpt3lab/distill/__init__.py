"""Knowledge distillation: a student trained on the data against a teacher's next-token distributions.

    gpt3lab distill --teacher runs/demo --data data/shakespeare-bpe4096 --out runs/student \
        --preset demo --set model.n_layer=2 --alpha 0.5 --temperature 2

loss.py     the loss (a train.loop.LossFn): alpha * T^2 * KL(teacher, student) + (1 - alpha) * CE
teacher.py  loading the teacher, the shared-tokenizer check, --init-from-teacher
cli.py      `gpt3lab distill`: `gpt3lab train` with that loss and teacher (one loop, one checkpoint format)
"""
from gpt3lab.distill.loss import DistillLoss, kd_divergence

__all__ = ["DistillLoss", "kd_divergence"]
