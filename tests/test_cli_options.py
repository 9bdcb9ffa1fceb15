"""Every size/count option of every command (issue 11): 0 where meaningless, negative, huge and non-numeric
values are refused by argparse with exit 2 and a message naming the flag, before any work starts
(`prepare --shard-tokens 0` used to loop forever creating empty files)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt3lab.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]

# positional arguments that make each (sub)command's parser accept the rest
PREFIX = {"prepare": ["src", "--out", "o"], "tokenizer train": ["src", "--out", "o", "--vocab-size", "300"],
          "train": ["--out", "o"], "generate": ["ck"], "size": ["gpt3-small"], "demo": [], "eval": ["ck"],
          "finetune": ["--out", "o"], "distill": ["--out", "o"], "serve": ["ck"], "compress": ["ck", "in", "out"],
          "convert": ["--to-hf", "ck", "o"], "plot": ["run"], "tokenizer encode": [], "tokenizer decode": [],
          "tokenizer info": [], "scaling": []}
# (command, flag) where 0 is a meaningful value; every other numeric option refuses it
ZERO_OK = {("serve", "--port"), ("serve", "--shutdown-timeout"), ("demo", "--sample-tokens"),
           ("generate", "--max-tokens"), ("generate", "--top-k"), ("generate", "--temperature"),
           ("generate", "--seed"), ("eval", "--seed"), ("prepare", "--seed"), ("prepare", "--val-fraction"),
           ("finetune", "--val-fraction"), ("finetune", "--lora-dropout"), ("distill", "--alpha"),
           ("scaling", "--seed"), ("scaling", "--eval-tokens"), ("scaling", "--bootstrap")}
# (command, flag) where a huge value is harmless: top_k >= the vocabulary means no filtering, like 0
HUGE_OK = {("generate", "--top-k")}


def _parsers():
    """(command words, parser) for every command and sub-action."""
    for name in COMMANDS:
        p = build_parser([name])._subparsers._group_actions[0].choices[name]
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            yield from ((f"{name} {s}", sp) for s, sp in subs[0].choices.items())
        else:
            yield name, p


def _numeric_options():
    """(command words, flag, is_float) of every option whose value is a number (its type refuses "abc")."""
    out = []
    for cmd, p in _parsers():
        for a in p._actions:
            if a.option_strings and a.type is not None and not _accepts(a.type, "abc"):
                assert a.type not in (int, float), f"{cmd} {a.option_strings[0]}: use a gpt3lab.argtypes type"
                out.append((cmd, a.option_strings[0], _accepts(a.type, "0.5")))     # ints refuse "0.5"
    return out


def _accepts(typ, text: str) -> bool:
    try:
        typ(text)
        return True
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


OPTIONS = _numeric_options()


def _parse(cmd: str, flag: str, value: str):
    words = cmd.split()
    return main([*words, *PREFIX[cmd], f"{flag}={value}"])


def test_the_table_covers_every_command_with_numeric_options():
    assert {c.split()[0] for c, _, _ in OPTIONS} == {"prepare", "tokenizer", "train", "generate", "size", "demo",
                                                      "eval", "finetune", "distill", "serve", "compress", "scaling"}
    assert ("prepare", "--shard-tokens", False) in OPTIONS and len(OPTIONS) >= 40


class Parsed(Exception):
    """Raised instead of running a command: the value was accepted."""


@pytest.fixture(autouse=True)
def _parse_only(monkeypatch):
    """Commands keep their flags but never run: parsing is what is tested."""
    import gpt3lab.cli as cli
    load = cli._load

    def load_(name):
        return argparse.Namespace(add_arguments=load(name).add_arguments, run=_accepted)
    monkeypatch.setattr(cli, "_load", load_)


def _accepted(args):
    raise Parsed


@pytest.mark.parametrize("cmd, flag, is_float", OPTIONS, ids=[f"{c}:{f}" for c, f, _ in OPTIONS])
def test_bad_values_are_refused_naming_the_flag(cmd, flag, is_float, capsys):
    bad = ["-1", "abc", "", "nan"]
    if (cmd.split()[0], flag) not in HUGE_OK:
        bad.append("1e999" if is_float else str(10 ** 30))
    if (cmd.split()[0], flag) not in ZERO_OK:
        bad.append("0")
    for value in bad:
        with pytest.raises(SystemExit) as e:
            _parse(cmd, flag, value)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument {flag}: " in err and "Traceback" not in err, (value, err)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(option=st.sampled_from(OPTIONS), value=st.one_of(st.text(max_size=12), st.integers().map(str),
                                                       st.floats().map(repr)))
def test_any_value_parses_or_is_a_clear_error(option, value):
    import contextlib
    import io

    cmd, flag, _ = option
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            _parse(cmd, flag, value)
        except Parsed:
            return                                   # accepted: a value in range
        except SystemExit as e:
            assert e.code == 2 and f"argument {flag}: " in err.getvalue(), err.getvalue()
            return
    raise AssertionError("neither parsed nor refused")


def test_values_in_range_are_accepted():
    for cmd, flag, is_float in OPTIONS:
        with pytest.raises(Parsed):
            _parse(cmd, flag, {"--vocab-size": "300"}.get(flag, "0.5" if is_float else "1"))


def test_prepare_shard_tokens_zero_exits_at_once(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    r = subprocess.run([sys.executable, "-m", "gpt3lab", "prepare", str(tmp_path / "a.txt"), "--out",
                        str(tmp_path / "d"), "--shard-tokens", "0"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "argument --shard-tokens: 0 is out of range" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "d").exists()
