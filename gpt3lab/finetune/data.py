"""Fine-tuning data: prompt/completion, chat or Alpaca JSONL, or plain text -> fixed-length rows -> a batch source.

JSONL, one example per line (blank lines ignored), in any of three shapes:

    {"prompt": "12+34=", "completion": "46"}                                   the GPT-3 fine-tuning format
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}   chat
    {"instruction": "Add the numbers.", "input": "12, 34", "output": "46"}      Alpaca ("input" optional)

Alpaca records become prompt/completion with Alpaca's own prompt (ALPACA_PROMPT / ALPACA_PROMPT_NO_INPUT).
A chat record is rendered by the chat template (gpt3lab.chat: the base checkpoint's, else the plain
default) and tokenized exactly as `serve` does it (content may be a string or OpenAI's list of text parts;
an "<|endoftext|>" typed in it is plain text, not the special token); the targets are the assistant turns only (each turn's text as
the template writes it after the generation prompt), plus the final `<|endoftext|>` when the conversation
ends with the assistant.

An example is `encode(prompt) + encode(completion) + [<|endoftext|>]` (an empty prompt becomes
`<|endoftext|>`, as at generation time). Prompt and completion are encoded separately, exactly as the
model sees them when it completes the prompt. Targets are the completion tokens and the final
`<|endoftext|>` (so the model learns to stop); prompt tokens are -100 unless include_prompt.

Rows hold context + 1 tokens (x = row[:-1], y = row[1:]). "pack" puts as many whole examples in a row as
fit (in order, never splitting one; they see each other through causal attention, separated by
`<|endoftext|>`); "pad" puts one example per row. The rest of a row is padding (ignored targets). An
example longer than context + 1 tokens is skipped and counted (strict: DataError naming its line).

A plain-text file (any other suffix) is one document: its tokens + `<|endoftext|>`, cut into rows of
context + 1 tokens with stride `context`, every token a target.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt3lab.errors import ConfigError, DataError

IGNORE = -100
KEYS = {"prompt", "completion"}
ALPACA_KEYS = {"instruction", "input", "output"}
MAX_LISTED_ERRORS = 5
ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


@dataclass
class Example:
    ids: list[int]          # prompt + completion + eot
    n_prompt: int           # leading tokens that are prompt (not targets unless include_prompt)
    line: int               # 1-based source line (plain text: 0)
    targets: list[bool] | None = None   # chat: which tokens are targets (overrides n_prompt)

    def target_mask(self, include_prompt: bool) -> list[bool]:
        if include_prompt:
            return [True] * len(self.ids)
        if self.targets is not None:
            return self.targets
        return [i >= self.n_prompt for i in range(len(self.ids))]


@dataclass
class DataStats:
    """What loading did: counts for the CLI to report."""
    path: str
    examples: int = 0
    skipped_too_long: int = 0
    skipped_lines: list[int] = field(default_factory=list)
    train_examples: int = 0
    val_examples: int = 0
    train_rows: int = 0
    val_rows: int = 0
    target_tokens: int = 0      # train targets (y != -100)
    longest: int = 0


# ---- reading and validation ---------------------------------------------------------------------------

def _check_record(obj, line: int) -> dict | str:
    """The record normalised to {"prompt", "completion"} or {"messages"}, or an error message for this line."""
    if not isinstance(obj, dict):
        return f"line {line}: expected a JSON object {{\"prompt\": ..., \"completion\": ...}}, got {type(obj).__name__}"
    if "messages" in obj:
        return _check_chat(obj, line)
    if "instruction" in obj:
        return _check_alpaca(obj, line)
    missing, unknown = sorted(KEYS - set(obj)), sorted(set(obj) - KEYS)
    if missing:
        return f"line {line}: missing key(s) {', '.join(missing)}"
    if unknown:
        return (f"line {line}: unknown key(s) {', '.join(unknown)} (expected prompt and completion, messages, "
                f"or instruction/input/output)")
    bad = [k for k in ("prompt", "completion") if not isinstance(obj[k], str)]
    if bad:
        return f"line {line}: {bad[0]} must be a string, got {type(obj[bad[0]]).__name__}"
    if obj["completion"] == "":
        return f"line {line}: empty completion (there is nothing to learn from this example)"
    return {"prompt": obj["prompt"], "completion": obj["completion"]}


def _check_alpaca(obj: dict, line: int) -> dict | str:
    unknown = sorted(set(obj) - ALPACA_KEYS)
    if unknown or "output" not in obj:
        return f"line {line}: an Alpaca record has instruction, output and optionally input" + (
            f" (unknown: {', '.join(unknown)})" if unknown else " (no output)")
    bad = [k for k in ALPACA_KEYS if k in obj and not isinstance(obj[k], str)]
    if bad:
        return f"line {line}: {bad[0]} must be a string, got {type(obj[bad[0]]).__name__}"
    if obj["output"] == "":
        return f"line {line}: empty output (there is nothing to learn from this example)"
    tpl = ALPACA_PROMPT if obj.get("input") else ALPACA_PROMPT_NO_INPUT
    return {"prompt": tpl.format(instruction=obj["instruction"], input=obj.get("input", "")),
            "completion": obj["output"]}


def _check_chat(obj: dict, line: int) -> dict | str:
    from gpt3lab.chat import ROLES, content_text

    msgs = obj["messages"]
    if set(obj) != {"messages"}:
        return f"line {line}: a chat record holds only \"messages\" (unknown: {', '.join(sorted(set(obj) - {'messages'}))})"
    if not isinstance(msgs, list) or not msgs:
        return f"line {line}: messages must be a non-empty list of {{\"role\", \"content\"}} objects"
    texts = []
    for i, m in enumerate(msgs):
        text = content_text(m.get("content")) if isinstance(m, dict) else None
        if text is None or m.get("role") not in ROLES:
            return (f"line {line}: messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                    f"\"content\": a string or a list of {{\"type\": \"text\", \"text\": ...}} parts}}, "
                    f"got {json.dumps(m)[:60]}")
        texts.append(text)
    msgs = [{"role": m["role"], "content": t} for m, t in zip(msgs, texts)]
    if not any(m["role"] == "assistant" and m["content"] for m in msgs):
        return f"line {line}: no non-empty assistant message (there is nothing to learn from this example)"
    return {"messages": msgs}


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line, record) pairs, each record {"prompt", "completion"} (Alpaca converted) or {"messages"};
    DataError listing the bad lines (number and what is wrong)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    records, errors = [], []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            errors.append(f"line {i}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        r = _check_record(obj, i)
        (errors.append(r) if isinstance(r, str) else records.append((i, r)))
    if errors:
        more = f" (and {len(errors) - MAX_LISTED_ERRORS} more)" if len(errors) > MAX_LISTED_ERRORS else ""
        raise DataError(f"{path}: {len(errors)} bad line(s): " + "; ".join(errors[:MAX_LISTED_ERRORS]) + more)
    if not records:
        raise DataError(f"{path}: no examples (expected JSONL lines {{\"prompt\": ..., \"completion\": ...}})")
    return records


def is_jsonl(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".jsonl", ".json")


def encode_example(tok, prompt: str, completion: str, line: int = 0) -> Example:
    """prompt + completion + eot as one Example (an empty prompt becomes eot, as in generate)."""
    p = tok.encode(prompt) or [tok.eot_id]
    return Example(p + tok.encode(completion) + [tok.eot_id], len(p), line)


def encode_chat(tok, messages: list[dict], line: int = 0, template: str | None = None) -> Example:
    """A conversation rendered by `template`, targets = the assistant turns' tokens (+ the final eot when
    the conversation ends with the assistant). Segments are encoded separately at turn boundaries, as the
    served prompt ends at the generation prompt and the model's turn starts after it."""
    from gpt3lab.chat import assistant_spans, encode

    text, spans = assistant_spans(messages, template)
    ids, targets, pos = [], [], 0
    for start, end in spans + [(len(text), len(text))]:
        for seg, is_target in ((text[pos:start], False), (text[start:end], True)):
            seg_ids = encode(tok, seg) if seg else []
            ids += seg_ids
            targets += [is_target] * len(seg_ids)
        pos = end
    ids.append(tok.eot_id)
    targets.append(messages[-1]["role"] == "assistant")
    return Example(ids, 0, line, targets)


def load_examples(path: str | Path, tok, context: int, strict: bool = False,
                  chat_template: str | None = None) -> tuple[list[Example], DataStats]:
    """Examples of a JSONL or plain-text file that fit a row of context + 1 tokens, and the stats."""
    stats = DataStats(str(path))
    if not is_jsonl(path):
        return _text_examples(path, tok, context, stats)
    out = []
    for line, rec in read_jsonl(path):
        ex = (encode_chat(tok, rec["messages"], line, chat_template) if "messages" in rec
              else encode_example(tok, rec["prompt"], rec["completion"], line))
        if len(ex.ids) > context + 1:
            if strict:
                raise DataError(f"{path}: line {line}: example is {len(ex.ids)} tokens, longer than the "
                                f"model's context + 1 = {context + 1}; shorten it or drop --strict to skip it")
            stats.skipped_too_long += 1
            stats.skipped_lines.append(line)
            continue
        stats.longest = max(stats.longest, len(ex.ids))
        out.append(ex)
    if not out:
        raise DataError(f"{path}: all {stats.skipped_too_long} examples are longer than the model's context "
                        f"+ 1 = {context + 1} tokens")
    stats.examples = len(out)
    return out, stats


def _text_examples(path, tok, context: int, stats: DataStats) -> tuple[list[Example], DataStats]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); plain-text data must be UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: empty text file")
    ids = tok.encode(text) + [tok.eot_id]
    out = [Example(ids[s:s + context + 1], 0, 0) for s in range(0, max(1, len(ids) - 1), context)]
    stats.examples, stats.longest = len(out), max(len(e.ids) for e in out)
    return out, stats


# ---- rows ---------------------------------------------------------------------------------------------

def _row(examples: list[Example], context: int, pad_id: int, include_prompt: bool) -> tuple[list, list]:
    """One row: x, y of `context` tokens from whole examples (padding: pad_id / -100)."""
    toks, target = [], []
    for ex in examples:
        toks += ex.ids
        target += ex.target_mask(include_prompt)
    n = len(toks)
    toks += [pad_id] * (context + 1 - n)
    target += [False] * (context + 1 - n)
    y = [t if keep else IGNORE for t, keep in zip(toks[1:], target[1:])]
    return toks[:-1], y


def build_rows(examples: list[Example], context: int, pad_id: int, pack: bool = True,
               include_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Y) int64 of shape (rows, context): examples packed greedily in order, or one per row."""
    groups, cur, used = [], [], 0
    for ex in examples:
        if cur and (not pack or used + len(ex.ids) > context + 1):
            groups.append(cur)
            cur, used = [], 0
        cur.append(ex)
        used += len(ex.ids)
    if cur:
        groups.append(cur)
    rows = [_row(g, context, pad_id, include_prompt) for g in groups]
    X = torch.tensor([r[0] for r in rows], dtype=torch.long)     # (N, T)
    Y = torch.tensor([r[1] for r in rows], dtype=torch.long)     # (N, T)
    return X, Y


def split(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then (train, val) with round(n * val_fraction) validation examples."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction} must be in [0, 1)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = round(len(examples) * val_fraction)
    if n_val >= len(examples):
        n_val = len(examples) - 1
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


# ---- the batch source -----------------------------------------------------------------------------------

class RowBatches:
    """Batch source over fixed rows for `Trainer`: a seeded reshuffle per epoch, rank-strided, resumable.

    The row stream is infinite: position k is row perm_e[(k mod n) * world + rank] of epoch e = k // n,
    where n = rows // world (every rank sees the same number of rows per epoch).
    """

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, name: str = "train"):
        if X.shape != Y.shape or X.dim() != 2:
            raise ValueError(f"X {tuple(X.shape)} and Y {tuple(Y.shape)} must be equal (rows, context)")
        self.X, self.Y, self.batch_size = X, Y, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = X.shape[0] // world_size
        if self.per_rank < 1:
            raise DataError(f"{name} data has {X.shape[0]} row(s), fewer than the {world_size} processes; "
                            f"add examples or use fewer processes")
        self.k = 0
        self._perm = (None, None)

    def _perm_of(self, epoch: int) -> torch.Tensor:
        if self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.X.shape[0], generator=g))
        return self._perm[1]

    def _row_index(self, k: int) -> int:
        epoch, j = divmod(k, self.per_rank)
        return int(self._perm_of(epoch)[j * self.world_size + self.rank])

    def next_batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T) int64; y = -100 where no loss is taken."""
        B = batch_size or self.batch_size
        idx = torch.tensor([self._row_index(k) for k in range(self.k, self.k + B)])
        self.k += B
        return self.X[idx], self.Y[idx]

    def fixed_batches(self, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's rows in order, in batches of batch_size: the first n batches (for evaluation)."""
        mine = torch.arange(self.rank, self.per_rank * self.world_size, self.world_size)
        chunks = mine.split(self.batch_size)[:n]
        return [(self.X[c], self.Y[c]) for c in chunks]

    @property
    def epoch(self) -> float:
        return self.k / self.per_rank

    def state_dict(self) -> dict:
        return {"k": self.k, "rows": int(self.X.shape[0]), "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("rows") != self.X.shape[0] or state.get("seed") != self.seed:
            raise DataError(f"resume: the data gives {self.X.shape[0]} rows (seed {self.seed}), the checkpoint "
                            f"was trained on {state.get('rows')} (seed {state.get('seed')}); resume with the "
                            f"same data file and settings")
        # k counts this rank's rows; resumed on another world size, the ranks go on from the same global
        # position (the same rows, within an epoch: global position k * world is perm[k * world])
        done = int(state["k"]) * int(state.get("world_size", self.world_size))
        if done % self.world_size:
            raise DataError(f"resume: {done} rows were read by {state.get('world_size')} processes, which "
                            f"{self.world_size} processes cannot split evenly; resume on a divisor of {done}")
        self.k = done // self.world_size


def load_datasets(path, tok, context: int, batch_size: int, *, val_data=None, val_fraction: float = 0.1,
                  seed: int = 0, pack: bool = True, include_prompt: bool = False, strict: bool = False,
                  rank: int = 0, world_size: int = 1,
                  chat_template: str | None = None) -> tuple[RowBatches, RowBatches | None, DataStats]:
    """(train source, val source or None, stats) for `Trainer` from a data file (+ optional val file)."""
    examples, stats = load_examples(path, tok, context, strict, chat_template)
    if val_data is not None:
        (train_ex, _), (val_ex, vstats) = (split(examples, 0.0, seed),
                                           load_examples(val_data, tok, context, strict, chat_template))
        stats.skipped_too_long += vstats.skipped_too_long
    else:
        train_ex, val_ex = split(examples, val_fraction, seed)    # both shuffled: packing mixes examples
    X, Y = build_rows(train_ex, context, tok.eot_id, pack, include_prompt)
    stats.train_examples, stats.val_examples = len(train_ex), len(val_ex)
    stats.train_rows, stats.target_tokens = X.shape[0], int((Y != IGNORE).sum())
    train = RowBatches(X, Y, batch_size, seed, rank, world_size, "train")
    val = None
    if val_ex:
        VX, VY = build_rows(val_ex, context, tok.eot_id, pack, include_prompt)
        stats.val_rows = VX.shape[0]
        if VX.shape[0] >= world_size:
            val = RowBatches(VX, VY, batch_size, seed, rank, world_size, "validation")
    return train, val, stats


__all__ = ["Example", "DataStats", "read_jsonl", "encode_example", "encode_chat", "load_examples", "build_rows", "split",
           "RowBatches", "load_datasets", "IGNORE"]
