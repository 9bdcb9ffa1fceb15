"""Fit a run's step count to a wall-clock budget, from a short probe of what the run will spend.

`probe` times, with a Trainer built like the run's, the first step (warm-up: allocations, kernel
choice), steady optimizer steps, one evaluation and one checkpoint save. `steps_within` then finds the
largest step count whose run (the loop's evals and saves counted as `Trainer.fit` schedules them)
takes TARGET of the budget: the middle of 90-100%, so a probe off by ±5% still lands inside.

A short probe is not the run: on a shared box the first seconds of a process run slower or faster than the
minutes after them (measured: a probe at 0.24 s/step, then 100-step windows of 0.15-0.21 s). So a run
started with RunInfo.step_ceiling re-fits its step count as it goes (`refit`: at every eval_every steps
while under REFIT_UNTIL of the budget, from its own pace so far, evals and saves included), and the LR
schedule ends with the budget instead of being cut off or ending early. The loop's wall-clock cap
(RunInfo.max_seconds) still stops a run that the box slows down after the last re-fit: a loaded box gets
fewer steps, never a longer run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

TARGET = 0.95
REFIT_UNTIL = 0.75      # re-fit the step count until this fraction of the budget has passed, then keep it
REFIT_EVERY = 100       # steps between re-fits of a run without evaluations (eval_every = 0)


@dataclass(frozen=True)
class Costs:
    """Seconds one run spends on each kind of work."""
    step_s: float            # one steady-state optimizer step
    eval_s: float = 0.0      # one evaluation (0: the run does not evaluate)
    save_s: float = 0.0      # one checkpoint save (0: the run does not save)
    warmup_s: float = 0.0    # extra time of the first step over a steady one


def _count(n: int, every: int) -> int:
    """Events at steps divisible by `every`, plus one at the last step (as Trainer.fit does them)."""
    return (n // every + (n % every != 0)) if every > 0 else 1


def run_seconds(n: int, costs: Costs, eval_every: int, save_every: int) -> float:
    """Predicted training wall time of `n` steps."""
    return (costs.warmup_s + n * costs.step_s + _count(n, eval_every) * costs.eval_s
            + _count(n, save_every) * costs.save_s)


def steps_within(budget_s: float, costs: Costs, eval_every: int, save_every: int, target: float = TARGET) -> int:
    """The largest step count (at least 1) predicted to train in `target` x `budget_s` seconds."""
    goal = target * budget_s
    per_step = costs.step_s + (costs.eval_s / eval_every if eval_every > 0 else 0.0) + (
        costs.save_s / save_every if save_every > 0 else 0.0)
    fixed = costs.warmup_s + costs.eval_s + costs.save_s
    n = max(1, int((goal - fixed) / per_step))
    while run_seconds(n + 1, costs, eval_every, save_every) <= goal:      # the linear guess is close:
        n += 1                                                          # a few steps either way
    while n > 1 and run_seconds(n, costs, eval_every, save_every) > goal:
        n -= 1
    return n


def refit(step: int, elapsed_s: float, budget_s: float, ceiling: int, target: float = TARGET) -> int:
    """The step count (max_steps) with which a run that has done `step` steps in `elapsed_s` seconds (its
    evaluations, saves and warm-up included) ends at `target` x `budget_s` if it keeps its pace so far;
    at least step + 1 and at most `ceiling`."""
    pace = elapsed_s / max(step, 1)
    more = int((target * budget_s - elapsed_s) / pace) if pace > 0 else ceiling
    return max(step + 1, min(ceiling, step + more))


def probe(trainer, *, clock: Callable[[], float] = time.perf_counter, min_steps: int = 5,
          min_seconds: float = 5.0, max_steps: int = 200) -> Costs:
    """Time `trainer` (a fresh Trainer like the run's; its out_dir a scratch dir, as it saves once):
    one warm-up step, then steady steps until both `min_steps` and `min_seconds` (at most `max_steps`),
    then one evaluation (when it has eval data) and one save (when it has an out_dir)."""
    t0 = clock()
    trainer.train_step()
    first = clock() - t0
    t0, n = clock(), 0
    while n < max_steps and (n < min_steps or clock() - t0 < min_seconds):
        trainer.train_step()
        n += 1
    step_s = (clock() - t0) / n
    eval_s = save_s = 0.0
    if trainer.eval_data is not None and trainer.cfg.eval_batches:
        t0 = clock()
        trainer.evaluate()
        eval_s = clock() - t0
    if trainer.info.out_dir is not None:
        t0 = clock()
        trainer.save()
        save_s = clock() - t0
    return Costs(step_s=step_s, eval_s=eval_s, save_s=save_s, warmup_s=max(0.0, first - step_s))


__all__ = ["Costs", "REFIT_EVERY", "REFIT_UNTIL", "TARGET", "probe", "refit", "run_seconds", "steps_within"]
