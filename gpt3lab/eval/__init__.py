"""Zero/one/few-shot evaluation by priming (GPT-3 style), log-likelihood scoring, perplexity, bits/byte.

    from gpt3lab.eval import get_task, evaluate_task, perplexity
    task = get_task("arith-2d+")                       # or a JSONL task file
    evaluate_task(model, tok, task, k=8, limit=50).metrics
"""
from gpt3lab.eval.harness import evaluate_task, format_table, plot, run
from gpt3lab.eval.prompts import Item, Prompt, PromptFormat, build_prompt
from gpt3lab.eval.scoring import Perplexity, Score, loglikelihood, perplexity, score_choices, score_requests
from gpt3lab.eval.tasks import Task, builtin_task, get_task, load_task_file

__all__ = ["evaluate_task", "format_table", "plot", "run", "Item", "Prompt", "PromptFormat", "build_prompt",
           "Perplexity", "Score", "loglikelihood", "perplexity", "score_choices", "score_requests",
           "Task", "builtin_task", "get_task", "load_task_file"]
