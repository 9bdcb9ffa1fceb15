"""Start-up helper: run CPU work under a faster malloc than glibc's default.

PyTorch on CPU allocates and frees large activation buffers every step. glibc's malloc serves blocks
over its mmap threshold (at most 32 MiB) with fresh mmaps and page-faults them in again each time
(~40,000 faults per demo step); tcmalloc and mimalloc keep them, which took 1.2-1.5x less CPU per
training step (docs/BENCHMARKS.md, issue 16), and so does glibc with its thresholds raised. An
allocator can only be swapped before the process starts, so `use_fast_allocator()` re-executes the
same command with LD_PRELOAD set. The choice, in order:

1. tcmalloc, when the system has it (`apt-get install libtcmalloc-minimal4`);
2. mimalloc from the `cmeel-mimalloc` wheel (a default dependency on Linux x86-64/aarch64, so a plain
   `pip install` gives every user the fast path without root), with purging of freed pages off;
3. glibc malloc, tuned in-process with mallopt (`GLIBC_MALLOPT`; no re-exec).

GPT3LAB_ALLOCATOR=auto|tcmalloc|mimalloc|glibc picks one (glibc: no re-exec); the older switch
GPT3LAB_NO_TCMALLOC=1 means glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from gpt3lab.errors import UserError

ENV = "GPT3LAB_ALLOCATOR"
DISABLE_ENV = "GPT3LAB_NO_TCMALLOC"       # the older switch: any value but "" / "0" means glibc
_REEXEC_ENV = "GPT3LAB_ALLOCATOR_REEXEC"   # set in the child, so a failed preload cannot loop
CHOICES = ("auto", "tcmalloc", "mimalloc", "glibc")
_TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
    "/usr/local/lib/libtcmalloc_minimal.so.4",
)
# mallopt(param, value) for glibc: serve blocks up to 1 GiB from the heap instead of fresh mmaps and keep
# up to 1 GiB of freed top-of-heap memory (no trim), so activation buffers are reused, not page-faulted
# in again each step. Fixing the thresholds also turns off glibc's dynamic threshold (capped at 32 MiB).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_MALLOPT = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30}
# mimalloc's defaults purge (decommit) freed pages after 10 ms, so every step page-faults its activations
# back in (measured: ~4,800 faults and +50% CPU per demo step); never purging keeps them, as tcmalloc does.
# Set only where the user has not set them.
MIMALLOC_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}


def find_tcmalloc() -> str | None:
    """Path of libtcmalloc_minimal (or libtcmalloc) if installed, else None."""
    for p in _TCMALLOC_CANDIDATES:
        if Path(p).is_file():
            return p
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def find_mimalloc() -> str | None:
    """Path of libmimalloc.so from an installed `cmeel-mimalloc` wheel, else None."""
    from importlib import metadata

    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    libs = sorted((f for f in files if f.name.startswith("libmimalloc.so")), key=lambda f: len(f.name))
    for f in libs:                       # the shortest name is the plain libmimalloc.so
        path = Path(f.locate())
        if path.is_file():
            return str(path)
    return None


def loaded_allocator() -> str | None:
    """Path of the tcmalloc or mimalloc library mapped into this process, or None (glibc malloc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        if "tcmalloc" in line or "mimalloc" in line:
            return line.split()[-1]
    return None


def allocator_name() -> str:
    """'tcmalloc', 'mimalloc' or 'glibc': the malloc this process runs under."""
    lib = loaded_allocator()
    return "glibc" if lib is None else ("tcmalloc" if "tcmalloc" in lib else "mimalloc")


def requested() -> str:
    """The allocator asked for by the environment: one of CHOICES (UserError for anything else)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return "glibc"
    want = os.environ.get(ENV, "").strip().lower() or "auto"
    if want not in CHOICES:
        raise UserError(f"{ENV}={want!r} is not an allocator; use one of {', '.join(CHOICES)}")
    return want


def tune_glibc() -> bool:
    """Apply GLIBC_MALLOPT to this process's glibc malloc; False where there is no glibc mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in GLIBC_MALLOPT.items())


def _preload(name: str, lib: str) -> None:
    """Re-execute this command with `lib` preloaded. Never returns."""
    env = {**(MIMALLOC_ENV if name == "mimalloc" else {}), **os.environ}
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_REEXEC_ENV] = name
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


_CHOSEN: str | None = None   # what use_fast_allocator chose and why, for `train`'s summary


def chosen() -> str:
    """The allocator line of this process: use_fast_allocator's choice and reason, else the malloc loaded."""
    return _CHOSEN or (allocator_name() if loaded_allocator() else "glibc malloc")


_FINDERS = {"tcmalloc": find_tcmalloc, "mimalloc": find_mimalloc}
_INSTALL = {"tcmalloc": "apt-get install libtcmalloc-minimal4", "mimalloc": "pip install cmeel-mimalloc"}


def use_fast_allocator(announce: bool = True) -> str:
    """Re-exec this process under tcmalloc or mimalloc when available and not yet loaded (Linux only),
    else tune glibc malloc in-process.

    Returns (in the process that goes on running) "tcmalloc", "mimalloc" or "glibc", after printing one
    line to stderr saying which allocator is used. Never returns in a process it re-executes.
    """
    def say(msg: str) -> None:
        global _CHOSEN
        _CHOSEN = msg
        if announce:
            print(f"gpt3lab: allocator: {msg}", file=sys.stderr, flush=True)

    want = requested()
    loaded = loaded_allocator()
    if loaded:
        say(f"{allocator_name()} ({loaded})")
        return allocator_name()
    if want == "glibc":
        why = f"{DISABLE_ENV} is set" if os.environ.get(DISABLE_ENV, "") not in ("", "0") else f"{ENV}=glibc"
        return _glibc(say, why)
    if not sys.platform.startswith("linux"):
        return _glibc(say, "the preload is Linux-only")
    names = ("tcmalloc", "mimalloc") if want == "auto" else (want,)
    for name in names:
        lib = _FINDERS[name]()
        if lib is None:
            continue
        if os.environ.get(_REEXEC_ENV):
            return _glibc(say, f"preloading {lib} failed")
        _preload(name, lib)
    if want != "auto":
        return _glibc(say, f"{ENV}={want} but it is not installed: {_INSTALL[want]}")
    return _glibc(say, "no tcmalloc or mimalloc found; `pip install cmeel-mimalloc` for the fastest CPU runs")


def _glibc(say, why: str) -> str:
    tuned = tune_glibc()
    say(f"glibc malloc{', mallopt-tuned' if tuned else ''} ({why})")
    return "glibc"


__all__ = ["use_fast_allocator", "chosen", "find_tcmalloc", "find_mimalloc", "loaded_allocator", "allocator_name",
           "requested", "tune_glibc", "ENV", "DISABLE_ENV", "CHOICES", "GLIBC_MALLOPT", "MIMALLOC_ENV"]
