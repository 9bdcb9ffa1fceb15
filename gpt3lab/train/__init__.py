"""Training: the one loop (loop.py), schedules (schedule.py), MFU (perf.py), the DDP seam (distributed.py)."""
from gpt3lab.train.loop import RunInfo, Trainer, make_optimizer, param_groups, read_log
from gpt3lab.train.schedule import batch_tokens_at, grad_accum_steps, lr_at

__all__ = ["Trainer", "RunInfo", "make_optimizer", "param_groups", "read_log", "lr_at", "batch_tokens_at",
           "grad_accum_steps"]
