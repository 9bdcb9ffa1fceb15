"""What --help says: every default shown (0 included), the default fine-tuning method explicit, and the int8
speed-up one measured figure, the same in --help, the README and docs/BENCHMARKS.md."""
import re
from pathlib import Path

from gpt3lab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _help(*words) -> str:
    p = build_parser(list(words))
    sub = p._subparsers._group_actions[0].choices[words[0]]
    return " ".join(sub.format_help().split())


def test_finetune_help_shows_the_method_and_lora_defaults():
    text = _help("finetune")
    assert "(default: full)" in text and "lora: train low-rank adapters only" in text
    for flag, default in (("--lora-rank", "8"), ("--lora-alpha", "16.0"), ("--lora-dropout", "0.0")):
        assert re.search(rf"{flag} \S+ .*?\(default: {re.escape(default)}\)", text), flag


def test_zero_defaults_are_shown():
    assert "(default: 0)" in _help("prepare")          # --seed 0


def test_int8_speedup_is_one_measured_figure_everywhere():
    help_ = _help("generate")
    readme = (ROOT / "README.md").read_text()
    bench = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    said = set(re.findall(r"(\d+(?:\.\d+)?)x faster decoding", help_ + readme))
    assert said == {"2.6"}
    # docs/BENCHMARKS.md issue 12: 315.4 ms fp32 vs 122.7 ms int8 per token, 12L/768d, 1 thread
    row = re.search(r"\| 12L/768d \(124M\) \| ([\d.]+) \| \*\*([\d.]+)\*\*", bench)
    assert round(float(row.group(1)) / float(row.group(2)), 1) == 2.6
