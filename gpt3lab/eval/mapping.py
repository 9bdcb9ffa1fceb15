"""The priming demo's held-out task: key -> value mappings that only in-context lookup can answer.

Every document (gpt3lab.priming_demo trains on them) draws its own random mapping of 4 keys to 4 values;
`heldout_task(i)` is mapping i of a seed range training never uses, as an eval task (the 4 values as
multiple choice). Here, apart from the training code, so inspect's priming view needs no trainer.
"""
from __future__ import annotations

import random

from gpt3lab.eval.prompts import Item, PromptFormat
from gpt3lab.eval.tasks import Task

KEYS, VALUES, NOISE = "abcdefgh", "ABCDEFGH", "0123456789"   # few symbols: learnt in few steps
N_KEYS = 4
HELDOUT_SEED = 10_000_000      # held-out mappings come from a seed range training never uses


def mapping_format():
    return PromptFormat(delimiter="", separator="")      # 3-character lines back to back: 7cH2bE0cH...


def random_mapping(rng: random.Random) -> dict[str, str]:
    return dict(zip(rng.sample(KEYS, N_KEYS), rng.sample(VALUES, N_KEYS)))


def heldout_task(index: int):
    """The eval task of held-out mapping `index`: all 40 `<digit><key>` queries, the 4 values as choices;
    the pool is the task's own items (the query itself is never among its examples)."""
    rng = random.Random(HELDOUT_SEED + index)
    m = random_mapping(rng)
    choices = sorted(m.values())
    items = [Item(d + k, choices=choices, answer=choices.index(v)) for k, v in m.items() for d in NOISE]
    rng.shuffle(items)
    return Task(name=f"mapping-{index}", kind="multiple_choice", items=items, fmt=mapping_format(),
                source="gpt3lab.priming_demo")


__all__ = ["heldout_task", "mapping_format", "random_mapping"]
