"""`prepare` on damaged input and in hostile conditions (issue 23): every bad file is one line naming it (never a
traceback, never half the text), a killed worker is one line, workers die with their parent, and the output
directory is never read as a source."""
from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt3lab.cli import main
from gpt3lab.data import prepare
from gpt3lab.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _text(n_lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)] + ["é✓", "the", "king"]
    return "".join(" ".join(rng.choice(words) for _ in range(12)) + "\n" for _ in range(n_lines))


def _zst(data: bytes, **kw) -> bytes:
    """A streamed zstd frame (no content size in its header), as `zstd` writes for a pipe."""
    import io

    import zstandard
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(**kw).stream_writer(buf, closefd=False) as w:
        for i in range(0, len(data), 1 << 16):
            w.write(data[i:i + (1 << 16)])
    return buf.getvalue()


def _tokens(data_dir: Path, split: str = "train") -> list[int]:
    h = json.loads((data_dir / f"{split}.json").read_text())
    return np.concatenate([np.fromfile(data_dir / s["file"], dtype=h["dtype"]) for s in h["shards"]]).tolist()


def _cli_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("gpt3lab: error:"), err
    return err


# ---- compressed and columnar files ---------------------------------------------------------------------

def test_a_truncated_zst_is_refused_not_half_read(tmp_path, capsys):
    data = _text(20_000).encode()
    whole = _zst(data)
    (tmp_path / "c.txt.zst").write_bytes(whole[:len(whole) // 2])
    err = _cli_error(["prepare", str(tmp_path / "c.txt.zst"), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert "c.txt.zst: truncated" in err
    assert not (tmp_path / "o" / "train.json").exists()


def test_multi_frame_zst_reads_every_frame(tmp_path):
    """Frames concatenated (as `zstd` writes with --long or pzstd, or `cat a.zst b.zst`): the whole text."""
    a, b = _text(3000, 1), _text(3000, 2)
    (tmp_path / "two.txt.zst").write_bytes(_zst(a.encode()) + _zst(b.encode(), write_checksum=True))
    (tmp_path / "plain.txt").write_text(a + b)
    for name in ("two.txt.zst", "plain.txt"):
        prepare([str(tmp_path / name)], tmp_path / f"o-{name}", val_fraction=0.0, progress=False)
    assert _tokens(tmp_path / "o-two.txt.zst") == _tokens(tmp_path / "o-plain.txt")


@pytest.mark.parametrize("case,expect", [
    ("gz-truncated", "a.txt.gz: truncated"),
    ("gz-not-gzip", "a.txt.gz: not gzip data"),
    ("gz-corrupt", "a.txt.gz: corrupt"),
    ("zst-corrupt", "a.txt.zst: corrupt"),
    ("zst-not-zstd", "a.txt.zst: corrupt"),
    ("jsonl-gz-truncated", "a.jsonl.gz: truncated"),
])
def test_damaged_compressed_files_are_one_line_naming_the_file(tmp_path, capsys, case, expect):
    text = _text(4000).encode()
    name = expect.split(":")[0]
    if case.startswith("jsonl"):
        text = "".join(json.dumps({"text": line}) + "\n" for line in text.decode().splitlines()).encode()
    if case == "gz-truncated" or case == "jsonl-gz-truncated":
        blob = gzip.compress(text)[:-20000]
    elif case == "gz-not-gzip":
        blob = text
    elif case == "gz-corrupt":
        blob = bytearray(gzip.compress(text))
        blob[len(blob) // 2:len(blob) // 2 + 8] = b"\xff" * 8
    elif case == "zst-corrupt":
        blob = bytearray(_zst(text, write_checksum=True))
        blob[len(blob) // 2:len(blob) // 2 + 8] = b"\xff" * 8
    else:
        blob = text
    (tmp_path / name).write_bytes(bytes(blob))
    err = _cli_error(["prepare", str(tmp_path / name), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert expect in err


def test_a_broken_arrow_file_names_the_file(tmp_path, capsys):
    import datasets
    datasets.Dataset.from_dict({"text": [_text(20, i) for i in range(200)]}).save_to_disk(str(tmp_path / "ds"))
    capsys.readouterr()         # save_to_disk's progress bar
    arrow = next((tmp_path / "ds").glob("*.arrow"))
    for broken in (arrow.read_bytes()[:arrow.stat().st_size // 2], b"garbage" * 10):
        arrow.write_bytes(broken)
        err = _cli_error(["prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
        assert f"{arrow}: unreadable Arrow file" in err


# ---- the output directory is not a source --------------------------------------------------------------

def test_prepare_never_reads_its_own_output(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"d{i}.txt").write_text(_text(200, i))
    ref = prepare([str(src)], tmp_path / "ref", val_fraction=0.2, progress=False)
    for _ in range(2):          # the second run finds shards, tokenizer and marker in src/out
        s = prepare([str(src)], src / "out", val_fraction=0.2, progress=False)
        assert s["documents"] == ref["documents"] == 6 and s["bytes"] == ref["bytes"]
        assert _tokens(src / "out") == _tokens(tmp_path / "ref")
    s = prepare([str(src / "*.txt"), str(src / "**" / "*.json")], src / "out", val_fraction=0.2, progress=False)
    assert s["documents"] == 6
    with pytest.raises(DataError, match="is inside the output directory"):
        prepare([str(src / "out" / "train.json")], src / "out", progress=False)
    assert _tokens(src / "out") == _tokens(tmp_path / "ref")     # refused before anything was touched


# ---- worker processes ----------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of `pid`, from /proc."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(_text(150_000))
    return path


def _start(corpus: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """`gpt3lab prepare --workers 2` running, and its children (2 workers + the resource tracker) once up."""
    proc = subprocess.Popen([sys.executable, "-m", "gpt3lab", "prepare", str(corpus), "--out", str(out),
                             "--workers", "2", "--no-progress", "--val-fraction", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "GPT3LAB_NO_TCMALLOC": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        kids, shard = _children(proc.pid), out / "train_0000.bin.tmp"
        if len(kids) >= 3 and shard.exists() and shard.stat().st_size:       # tokens are coming back
            return proc, kids
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"prepare did not start its workers: {proc.communicate()[1][-2000:]}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(big_corpus, tmp_path):
    proc, kids = _start(big_corpus, tmp_path / "o")
    assert len(kids) >= 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    left = [k for k in kids if _alive(k)]
    for k in left:           # do not leave them behind even when the test fails
        os.kill(k, signal.SIGKILL)
    assert not left, f"processes outlived the killed parent: {left}"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_worker_is_one_line(big_corpus, tmp_path):
    proc, kids = _start(big_corpus, tmp_path / "o")
    workers = [k for k in kids if "resource_tracker" not in Path(f"/proc/{k}/cmdline").read_text()]
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert "a tokenizer worker process died" in lines[0] and "big.txt" in lines[0]
