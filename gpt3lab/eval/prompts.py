"""Few-shot prompts, GPT-3 style ("priming"): an optional task description, k solved examples drawn
from a pool, then the query.

    [description + separator]
    example_1.context + delimiter + example_1.target + separator
    ...
    example_k.context + delimiter + example_k.target + separator
    query.context                          <- the prompt ends here; the model continues with
                                              delimiter + answer (scored or generated)

Examples are drawn with a seeded RNG per (seed, item index), so a prompt is reproducible, and the test
item is never among them (excluded by index when the pool is the test set, and by equal context always).
When a prompt does not fit the model's context, examples are dropped from the front (the furthest from
the query) and the drop is reported; with strict=True that is an error instead.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from gpt3lab.errors import ConfigError
from gpt3lab.errors import ContextOverflowError


@dataclass
class Item:
    """One task example. Multiple choice: `choices` + `answer` (index); otherwise `target`."""
    context: str
    target: str | None = None
    choices: list[str] | None = None
    answer: int | None = None

    @property
    def gold(self) -> str:
        """The correct continuation text (without the delimiter)."""
        return self.choices[self.answer] if self.choices is not None else self.target


@dataclass
class PromptFormat:
    description: str | None = None
    delimiter: str = " "        # between an example's context and its target
    separator: str = "\n\n"     # between examples (and after the description)


@dataclass
class Prompt:
    text: str                   # ends with the query's context
    shots: int                  # examples included
    requested: int              # examples asked for (shots < requested: trimmed to fit)
    example_ids: list[int] = field(default_factory=list)   # pool indices, in prompt order

    @property
    def trimmed(self) -> bool:
        return self.shots < self.requested


def sample_examples(pool: list[Item], k: int, seed: int, index: int, query: Item,
                    pool_is_test_set: bool, task: str = "task") -> list[int]:
    """k distinct pool indices for test item `index`, deterministic in (seed, index), never the query."""
    candidates = [i for i, ex in enumerate(pool)
                  if not (pool_is_test_set and i == index) and ex.context != query.context]
    if k > len(candidates):
        raise ConfigError(f"{task}: {k} examples requested but the few-shot pool has only "
                          f"{len(candidates)} (test item excluded); lower --shots or add examples")
    rng = random.Random(seed * 1_000_003 + index)
    return rng.sample(candidates, k)


def render(fmt: PromptFormat, examples: list[Item], query: Item) -> str:
    """The prompt text for these examples (in order) and the query."""
    parts = [ex.context + fmt.delimiter + ex.gold for ex in examples] + [query.context]
    if fmt.description:
        parts.insert(0, fmt.description)
    return fmt.separator.join(parts)


def build_prompt(fmt: PromptFormat, pool: list[Item], query: Item, k: int, seed: int, index: int,
                 pool_is_test_set: bool = True, count_tokens=None, budget: int | None = None,
                 strict: bool = False, task: str = "task") -> Prompt:
    """Prompt for test item `index` with k examples. With count_tokens(text) -> int and `budget`
    (tokens the prompt may take), drop leading examples until it fits."""
    ids = sample_examples(pool, k, seed, index, query, pool_is_test_set, task)
    text = render(fmt, [pool[i] for i in ids], query)
    if count_tokens is None or budget is None:
        return Prompt(text, k, k, ids)
    while count_tokens(text) > budget:
        if not ids:
            raise ContextOverflowError(
                f"{task}: item {index} does not fit the model's context even with 0 examples "
                f"({count_tokens(text)} prompt tokens > budget {budget}); shorten the item or use a "
                f"model with a longer context")
        if strict:
            raise ContextOverflowError(
                f"{task}: {k} examples do not fit the model's context for item {index} "
                f"({count_tokens(text)} prompt tokens > budget {budget}); lower --shots or drop "
                f"--strict-shots to trim examples")
        ids = ids[1:]
        text = render(fmt, [pool[i] for i in ids], query)
    return Prompt(text, len(ids), k, ids)
