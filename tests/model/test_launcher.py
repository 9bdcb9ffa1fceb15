"""The allocator launcher re-executes under tcmalloc when present, and can be turned off."""
import os
import subprocess
import sys

import pytest

from gpt3lab import launcher

SCRIPT = "from gpt3lab.launcher import use_fast_allocator; print('RESULT', use_fast_allocator())"


def _run(**env):
    e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", launcher.DISABLE_ENV,
                                                          "GPT3LAB_ALLOCATOR_REEXEC")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", SCRIPT], env=e, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(launcher.find_tcmalloc() is None, reason="libtcmalloc-minimal4 not installed")
def test_reexecs_under_tcmalloc_once_and_announces_it():
    p = _run()
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("RESULT tcmalloc") == 1
    assert p.stderr.count("gpt3lab: allocator: tcmalloc") == 1


def test_disabled_by_env():
    p = _run(**{launcher.DISABLE_ENV: "1"})
    assert p.stdout.strip() == "RESULT glibc"
    assert "GPT3LAB_NO_TCMALLOC is set" in p.stderr
