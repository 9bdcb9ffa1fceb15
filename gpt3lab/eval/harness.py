"""Run tasks x shots -> metrics, the way the GPT-3 paper measured in-context learning.

Per task kind (primary metric first; it is the one plotted):
  multiple_choice  acc       argmax over choices of log p(delimiter + choice | prompt)
                   acc_norm  argmax of that log-likelihood divided by the choice's length in characters
                             (len(choice), delimiter excluded; lm-eval-harness's acc_norm)
  generation       exact_match  greedy decode until a stop string, stripped, == target stripped
  last_word        acc       every token of " " + last word is the greedy (argmax) token; the item's
                             prediction is the argmax tokens at the target's positions, decoded
                   ppl       exp(-mean over items of log p(target | prompt))   (lm-eval's lambada ppl)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gpt3lab.eval.prompts import Prompt, build_prompt
from gpt3lab.eval.scoring import score_choices, score_requests
from gpt3lab.eval.tasks import Task

PRIMARY = {"multiple_choice": "acc", "generation": "exact_match", "last_word": "acc"}


@dataclass
class ShotResult:
    k: int
    n: int
    metrics: dict[str, float]
    trimmed: int = 0            # prompts that lost examples to fit the context
    mean_shots: float = 0.0     # examples actually included, averaged over items
    examples: list[dict] = field(default_factory=list)   # first few (prompt, gold, prediction) for inspection


def _prompts(task: Task, tokenizer, model, k: int, seed: int, limit: int | None, strict: bool) -> list[Prompt]:
    items = task.items[:limit] if limit else task.items
    C = model.config.context
    out = []
    for i, item in enumerate(items):
        conts = [task.fmt.delimiter + c for c in item.choices] if item.choices else [task.fmt.delimiter + item.gold]
        reserve = max(len(tokenizer.encode(c)) for c in conts)
        if task.kind == "generation":
            reserve = max(reserve, task.max_tokens)
        out.append(build_prompt(task.fmt, task.pool, item, k, seed, i, task.fewshot is None,
                                lambda s: len(tokenizer.encode(s)), C - reserve, strict, task.name))
    return out


def _multiple_choice(task, items, prompts, model, tokenizer):
    hits = hits_norm = 0
    preds = []
    for item, p in zip(items, prompts):
        conts = [tokenizer.encode(task.fmt.delimiter + c) for c in item.choices]
        scores = [s.logprob for s in score_choices(model, tokenizer.encode(p.text), conts, tokenizer.eot_id)]
        pred = max(range(len(scores)), key=scores.__getitem__)
        pred_norm = max(range(len(scores)), key=lambda j: scores[j] / max(1, len(item.choices[j])))
        hits += pred == item.answer
        hits_norm += pred_norm == item.answer
        preds.append(item.choices[pred])
    n = len(items)
    return {"acc": hits / n, "acc_norm": hits_norm / n}, preds


def _generation(task, items, prompts, model, tokenizer):
    from gpt3lab.generate import generate

    hits, preds = 0, []
    for item, p in zip(items, prompts):
        g = generate(model, tokenizer, p.text, max_tokens=task.max_tokens, temperature=0, stop=task.stop or None)
        hits += g.text.strip() == item.target.strip()
        preds.append(g.text)
    return {"exact_match": hits / len(items)}, preds


def _last_word(task, items, prompts, model, tokenizer, batch_size):
    reqs = [(tokenizer.encode(p.text), tokenizer.encode(task.fmt.delimiter + it.target)) for it, p in zip(items, prompts)]
    scores = score_requests(model, reqs, tokenizer.eot_id, batch_size)
    acc = sum(s.is_greedy for s in scores) / len(scores)
    ppl = math.exp(-sum(s.logprob for s in scores) / len(scores))
    # the prediction: the argmax token at each target position (teacher-forced), decoded; it equals the
    # target exactly when the item counts as a hit
    return {"acc": acc, "ppl": ppl}, [tokenizer.decode(s.argmax) for s in scores]


def evaluate_task(model, tokenizer, task: Task, k: int, seed: int = 0, limit: int | None = None,
                  strict: bool = False, batch_size: int = 16, keep_examples: int = 3) -> ShotResult:
    """Metrics of `task` with k in-context examples per item."""
    items = task.items[:limit] if limit else task.items
    prompts = _prompts(task, tokenizer, model, k, seed, limit, strict)
    if task.kind == "multiple_choice":
        metrics, preds = _multiple_choice(task, items, prompts, model, tokenizer)
    elif task.kind == "generation":
        metrics, preds = _generation(task, items, prompts, model, tokenizer)
    else:
        metrics, preds = _last_word(task, items, prompts, model, tokenizer, batch_size)
    examples = [{"prompt": p.text, "gold": it.gold, "prediction": pr}
                for it, p, pr in list(zip(items, prompts, preds))[:keep_examples]]
    return ShotResult(k, len(items), metrics, sum(p.trimmed for p in prompts),
                      sum(p.shots for p in prompts) / len(prompts), examples)


def run(model, tokenizer, tasks: list[Task], shots: list[int], seed: int = 0, limit: int | None = None,
        strict: bool = False, progress=None) -> dict:
    """{task name: {"kind", "source", "n", "primary", "shots": {k: ShotResult as dict}}} (JSON-ready)."""
    results = {}
    for task in tasks:
        per_k = {}
        for k in shots:
            r = evaluate_task(model, tokenizer, task, k, seed, limit, strict)
            per_k[str(k)] = r.__dict__
            if progress:
                progress(task, r)
        results[task.name] = {"kind": task.kind, "source": task.source, "n": per_k[str(shots[0])]["n"],
                              "primary": PRIMARY[task.kind], "shots": per_k}
    return results


def format_table(results: dict) -> str:
    """Plain-text table: one row per task x metric, one column per k."""
    ks = sorted({int(k) for r in results.values() for k in r["shots"]})
    header = ["task", "metric", "n"] + [f"k={k}" for k in ks]
    rows = []
    for name, r in results.items():
        metrics = list(next(iter(r["shots"].values()))["metrics"])
        for m in metrics:
            cells = []
            for k in ks:
                s = r["shots"].get(str(k))
                v = s["metrics"][m] if s else None
                mark = "*" if s and s["trimmed"] else ""      # some prompts held fewer than k examples
                cells.append("-" if v is None else (f"{v:.2f}" if m == "ppl" else f"{100 * v:.1f}%") + mark)
            rows.append([name, m, str(r["n"])] + cells)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    trimmed = [f"* {n} k={k}: {s['trimmed']} prompts trimmed below k shots to fit the context "
               f"(mean {s['mean_shots']:.1f} shots)"
               for n, r in results.items() for k, s in r["shots"].items() if s["trimmed"]]
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows] + trimmed)


def plot(results: dict, path: str | Path, title: str = "") -> Path:
    """PNG of each task's primary metric vs number of in-context examples (the paper's curves)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top, all_ks = 0.0, set()
    for name, r in results.items():
        ks = sorted(int(k) for k in r["shots"])
        ys = [100 * r["shots"][str(k)]["metrics"][r["primary"]] for k in ks]
        line, = ax.plot(ks, ys, marker="o", label=f"{name} ({r['primary']})")
        cut = [(k, y) for k, y in zip(ks, ys) if r["shots"][str(k)]["trimmed"]]
        if cut:   # hollow rings: some prompts held fewer than k examples (trimmed to fit the context)
            ax.scatter(*zip(*cut), s=140, facecolors="none", edgecolors=line.get_color(), linewidths=1.5,
                       label=f"{name}: trimmed below k shots", zorder=3)
        top, all_ks = max(top, *ys), all_ks | set(ks)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax.set_ylim(0, max(10.0, min(100.0, top * 1.15)))
    ax.set_xlabel("number of examples in context (K)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "in-context learning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def save_json(obj: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
