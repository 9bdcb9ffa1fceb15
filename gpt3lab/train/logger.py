"""Where training records go besides RUN/log.jsonl + RUN/log.csv (always written: resume and plot read them).

    train.logger = csv          nothing more (the default)
                 = tensorboard  RUN/tensorboard/ event files (torch.utils.tensorboard; `pip install tensorboard`)
                 = wandb        a Weights & Biases run (`pip install wandb`; WANDB_MODE=offline works offline)

and, whatever the logger, `plain_line(record)`: the one-line summary the loop prints every log_every steps
when the progress bar is off (--no-progress, or stderr is not a terminal).
"""
from __future__ import annotations

from pathlib import Path

from gpt3lab.config import LOGGERS
from gpt3lab.errors import ConfigError
SCALARS = ("loss", "lr", "tokens_per_s", "mfu", "grad_norm", "val_loss", "val_bpb")
# the parts of a composite loss, logged when the loss function returns them (distillation: gpt3lab.distill)
LOSS_PARTS = ("ce_loss", "kd_loss")
SCALARS += LOSS_PARTS


class NullLogger:
    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars under train/ and val/, x = optimizer step."""

    def __init__(self, out_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.logger=tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or pip install gpt3lab[logging]); or use train.logger=csv") from None
        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def log(self, record: dict) -> None:
        for k in SCALARS:
            if record.get(k) is not None:
                self.writer.add_scalar(("val/" if k.startswith("val_") else "train/") + k, record[k], record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, out_dir: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.logger=wandb needs the wandb package: pip install wandb (or pip install "
                              "gpt3lab[logging]); or use train.logger=csv") from None
        self.run = wandb.init(project="gpt3lab", name=Path(out_dir).name, dir=str(out_dir), config=config,
                              resume="allow")

    def log(self, record: dict) -> None:
        self.run.log({k: record[k] for k in SCALARS if record.get(k) is not None}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def make_logger(kind: str, out_dir: Path | None, config: dict):
    """The logger named by train.logger (NullLogger without a run directory)."""
    if kind not in LOGGERS:
        raise ConfigError(f"train.logger={kind!r} must be one of {', '.join(LOGGERS)}")
    if out_dir is None or kind == "csv":
        return NullLogger()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return TensorBoardLogger(out_dir) if kind == "tensorboard" else WandbLogger(out_dir, config)


def plain_line(r: dict, max_steps: int) -> str:
    """'step 20/100 loss 4.1234 lr 3.00e-04 tok/s 5123 mfu 1.2% [val 4.2000 bpb 1.800] 12.3s'."""
    parts = [f"step {r['step']}/{max_steps}", f"loss {r['loss']:.4f}", f"lr {r['lr']:.2e}",
             f"tok/s {r['tokens_per_s']:.0f}", f"mfu {100 * r['mfu']:.1f}%"]
    parts.extend(f"{k.removesuffix('_loss')} {r[k]:.4f}" for k in LOSS_PARTS if r.get(k) is not None)
    if r.get("val_loss") is not None:
        parts.append(f"val {r['val_loss']:.4f}")
    if r.get("val_bpb") is not None:
        parts.append(f"bpb {r['val_bpb']:.3f}")
    return " ".join(parts) + f" {r.get('seconds', 0):.1f}s"
