"""Start-up helper: run CPU work under tcmalloc when it is installed.

PyTorch on CPU allocates and frees large activation buffers every step. glibc's malloc returns big
blocks to the OS and page-faults them back in each time (measured here: 0.5-0.9 s per training step);
tcmalloc keeps them, which made training 1.2-1.7x faster (docs/BENCHMARKS.md). An allocator can only
be swapped before the process starts, so `use_fast_allocator()` re-executes the same command with
LD_PRELOAD set. GPT3LAB_NO_TCMALLOC=1 turns this off.
"""
from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

DISABLE_ENV = "GPT3LAB_NO_TCMALLOC"
_REEXEC_ENV = "GPT3LAB_ALLOCATOR_REEXEC"   # set in the child, so a failed preload cannot loop
_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
    "/usr/local/lib/libtcmalloc_minimal.so.4",
)


def find_tcmalloc() -> str | None:
    """Path of libtcmalloc_minimal (or libtcmalloc) if installed, else None."""
    for p in _CANDIDATES:
        if Path(p).is_file():
            return p
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def loaded_allocator() -> str | None:
    """Path of the tcmalloc library mapped into this process, or None (glibc malloc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        if "tcmalloc" in line:
            return line.split()[-1]
    return None


def use_fast_allocator(announce: bool = True) -> str:
    """Re-exec this process under tcmalloc when available and not yet loaded (Linux only).

    Returns (in the process that goes on running) "tcmalloc" or "glibc", after printing one line
    to stderr saying which allocator is used. Never returns in a process it re-executes.
    """
    def say(msg: str) -> None:
        if announce:
            print(f"gpt3lab: allocator: {msg}", file=sys.stderr, flush=True)

    loaded = loaded_allocator()
    if loaded:
        say(f"tcmalloc ({loaded})")
        return "tcmalloc"
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        say(f"glibc malloc ({DISABLE_ENV} is set)")
        return "glibc"
    lib = find_tcmalloc() if sys.platform.startswith("linux") else None
    if lib is None:
        say("glibc malloc (install libtcmalloc-minimal4 for up to 1.7x faster CPU training)")
        return "glibc"
    if os.environ.get(_REEXEC_ENV):
        say(f"glibc malloc (preloading {lib} failed)")
        return "glibc"
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_REEXEC_ENV] = "1"
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    raise AssertionError("unreachable")


__all__ = ["use_fast_allocator", "find_tcmalloc", "loaded_allocator", "DISABLE_ENV"]
