"""Fine-tuning (full and LoRA) on prompt/completion JSONL through the one training loop.

    from gpt3lab.finetune import finetune
    finetune("runs/demo", "data.jsonl", "runs/ft", method="lora")
"""
from gpt3lab.finetune.cli import FINETUNE_DEFAULTS, finetune
from gpt3lab.finetune.data import RowBatches, build_rows, encode_example, load_datasets, load_examples, read_jsonl

__all__ = ["finetune", "FINETUNE_DEFAULTS", "RowBatches", "build_rows", "encode_example", "load_datasets",
           "load_examples", "read_jsonl"]
