"""Hugging Face `tokenizers` form (tokenizer.json) of a gpt3lab tokenizer, and back.

    write_hf_tokenizer(tok, dir, context)   tokenizer.json + tokenizer_config.json + special_tokens_map.json
    read_hf_tokenizer(dir)                  the gpt3lab Tokenizer of such a directory, or None

Our tokenizer is tiktoken-style BPE: token bytes -> rank, and a merge's priority is the rank of the
token it makes. HF BPE ranks *pairs*. The exact HF equivalent lists, for every token in rank order,
every split into two tokens that are both in the vocabulary (tiktoken merges any adjacent pair whose
concatenation is a token, whichever pair HF's trainer happened to learn it from), and sets
`ignore_merges` (tiktoken takes a whole pre-token that is itself a token directly). The pre-tokenizer is
our regex split followed by GPT-2's byte-to-character map, the same pipeline `Tokenizer.train` uses.
"""
from __future__ import annotations

import json
from pathlib import Path

from gpt3lab.errors import CheckpointError
from gpt3lab.tokenizer import EOT, GPT2_PATTERN, Tokenizer, _unicode_to_bytes, bytes_to_unicode

HF_TOKENIZER_FILE = "tokenizer.json"


def _chars(b: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[x] for x in b)


def merges_of(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """HF merge pairs equivalent to tiktoken `ranks`: every two-token split of each token, by rank."""
    merges = []
    for tok in sorted(ranks, key=ranks.get):
        r = ranks[tok]
        splits = [(ranks[tok[:i]], ranks[tok[i:]], i) for i in range(1, len(tok))
                  if ranks.get(tok[:i], r) < r and ranks.get(tok[i:], r) < r]
        merges += [(_chars(tok[:i]), _chars(tok[i:])) for _, _, i in sorted(splits)]
    return merges


def hf_tokenizer_dict(tok: Tokenizer) -> dict:
    """The tokenizer.json object (HF `tokenizers` serialisation) for `tok`."""
    vocab = {_chars(t): r for t, r in tok.ranks.items()}
    specials = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for s, i in tok.specials.items()]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": vocab, "merges": [list(m) for m in merges_of(tok.ranks)]},
    }


def write_hf_tokenizer(tok: Tokenizer, directory: str | Path, context: int,
                       chat_template: str | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
    d = Path(directory)
    (d / HF_TOKENIZER_FILE).write_text(json.dumps(hf_tokenizer_dict(tok), ensure_ascii=False), encoding="utf-8")
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context,
           "add_bos_token": False, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
           "gpt3lab_tokenizer_name": tok.name, **special}
    if chat_template:
        cfg["chat_template"] = chat_template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    (d / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def _pattern_of(pre: dict | None, where: Path) -> str:
    """The pre-tokenizer regex of a byte-level tokenizer.json; unsupported pipelines raise."""
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN                                 # GPT-2's own tokenizer.json
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split" and "Regex" in steps[0].get("pattern", {})
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space")):
        return steps[0]["pattern"]["Regex"]
    raise CheckpointError(f"{where}: unsupported pre-tokenizer {json.dumps(pre)[:120]}; only byte-level BPE "
                          f"(GPT-2's, or one written by gpt3lab) imports; pass --tokenizer gpt2|PATH instead")


def read_hf_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The gpt3lab Tokenizer of an HF directory's tokenizer.json; None when there is none."""
    path = Path(directory) / HF_TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        model, added = d["model"], d.get("added_tokens") or []
        vocab = model["vocab"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a Hugging Face tokenizer.json ({type(e).__name__}: {e})") from None
    pattern = _pattern_of(d.get("pre_tokenizer"), path)
    specials = {a["content"]: a["id"] for a in added if a.get("special")}
    if model.get("type") != "BPE" or specials.get(EOT) != len(vocab) - (EOT in vocab) or len(specials) != 1:
        raise CheckpointError(f"{path}: unsupported layout (needs a BPE whose only special token is {EOT} "
                              f"right after the merged tokens); pass --tokenizer gpt2|PATH instead")
    try:
        ranks = {_unicode_to_bytes(s): i for s, i in vocab.items() if s != EOT}
    except KeyError:
        raise CheckpointError(f"{path}: not a byte-level vocabulary; pass --tokenizer gpt2|PATH instead") from None
    if len(ranks) != len(vocab) - (EOT in vocab) or sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: token ids are not 0..{len(ranks) - 1} over distinct byte strings")
    _check_merge_order(model.get("merges") or [], ranks, path)
    gpt2 = Tokenizer.gpt2()
    if ranks == gpt2.ranks and pattern == GPT2_PATTERN:
        return gpt2
    name = _config_name(Path(directory)) or f"hf{len(ranks) + 1}"
    return Tokenizer(ranks, name=name, pattern=pattern)


def _check_merge_order(merges: list, ranks: dict[bytes, int], path: Path) -> None:
    """Ids must follow merge order (id = tiktoken rank); a tokenizer.json where they do not would
    tokenize differently here, so it is refused."""
    last = -1
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        r = ranks.get(_unicode_to_bytes(a) + _unicode_to_bytes(b), -1)
        if r < last:
            raise CheckpointError(f"{path}: merge {a!r} {b!r} makes id {r}, below an earlier merge's {last}; "
                                  f"only BPEs whose ids follow merge order import; pass --tokenizer gpt2|PATH")
        last = r


def _config_name(directory: Path) -> str | None:
    try:
        return json.loads((directory / "tokenizer_config.json").read_text())["gpt3lab_tokenizer_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
