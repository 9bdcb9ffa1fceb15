"""The allocator launcher: tcmalloc > mimalloc (wheel) > tuned glibc, one announcing line, switches."""
import os
import subprocess
import sys

import pytest

from gpt3lab import launcher
from gpt3lab.cli import wants_fast_allocator
from gpt3lab.errors import UserError

SCRIPT = "from gpt3lab.launcher import use_fast_allocator; print('RESULT', use_fast_allocator())"


def _env(**env):
    e = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", launcher.DISABLE_ENV, launcher.ENV,
                                                          "GPT3LAB_ALLOCATOR_REEXEC")}
    e.update(env)
    return e


def _run(*argv, **env):
    argv = argv or ("-c", SCRIPT)
    return subprocess.run([sys.executable, *argv], env=_env(**env), capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(launcher.find_mimalloc() is None, reason="cmeel-mimalloc not installed")
def test_reexecs_under_mimalloc_from_the_wheel_once_and_announces_it():
    p = _run(**{launcher.ENV: "mimalloc"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("RESULT mimalloc") == 1
    assert p.stderr.count("gpt3lab: allocator: mimalloc") == 1 and p.stderr.count("allocator:") == 1


@pytest.mark.skipif(launcher.find_tcmalloc() is None, reason="libtcmalloc-minimal4 not installed")
def test_reexecs_under_tcmalloc_once_and_announces_it():
    p = _run()
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("RESULT tcmalloc") == 1
    assert p.stderr.count("gpt3lab: allocator: tcmalloc") == 1


@pytest.mark.parametrize("env", [{launcher.DISABLE_ENV: "1"}, {launcher.ENV: "glibc"},
                                 {launcher.DISABLE_ENV: "1", launcher.ENV: "mimalloc"}])
def test_glibc_switches_turn_the_reexec_off(env):
    p = _run(**env)
    assert p.stdout.strip() == "RESULT glibc", p.stderr
    assert p.stderr.count("gpt3lab: allocator: glibc malloc") == 1
    assert (launcher.DISABLE_ENV if launcher.DISABLE_ENV in env else f"{launcher.ENV}=glibc") in p.stderr


class Reexec(Exception):
    def __init__(self, env):
        super().__init__(env["LD_PRELOAD"])
        self.env = env


@pytest.fixture
def fake_system(monkeypatch):
    """Pretend libraries exist; record the re-exec instead of doing it."""
    found = {"tcmalloc": "/sys/libtcmalloc_minimal.so.4", "mimalloc": "/wheel/libmimalloc.so"}
    for name in found:
        monkeypatch.setitem(launcher._FINDERS, name, lambda name=name: found[name])
    monkeypatch.setattr(launcher, "loaded_allocator", lambda: None)
    monkeypatch.setattr(launcher.sys, "platform", "linux")
    monkeypatch.setattr(launcher, "tune_glibc", lambda: True)
    for k in (launcher.ENV, launcher.DISABLE_ENV, "GPT3LAB_ALLOCATOR_REEXEC", "LD_PRELOAD", *launcher.MIMALLOC_ENV):
        monkeypatch.delenv(k, raising=False)

    def execve(exe, argv, env):
        raise Reexec(env)

    monkeypatch.setattr(launcher.os, "execve", execve)
    return found


def test_prefers_tcmalloc_then_mimalloc_then_glibc(fake_system, capsys):
    with pytest.raises(Reexec, match="libtcmalloc"):
        launcher.use_fast_allocator()
    fake_system["tcmalloc"] = None
    with pytest.raises(Reexec, match="libmimalloc"):
        launcher.use_fast_allocator()
    fake_system["mimalloc"] = None
    assert launcher.use_fast_allocator() == "glibc"
    assert capsys.readouterr().err.count("allocator: glibc malloc, mallopt-tuned (no tcmalloc or mimalloc") == 1


def test_a_named_allocator_is_used_even_when_another_ranks_first(fake_system, monkeypatch, capsys):
    monkeypatch.setenv(launcher.ENV, "mimalloc")
    with pytest.raises(Reexec, match="libmimalloc"):
        launcher.use_fast_allocator()
    fake_system["mimalloc"] = None                        # asked for but absent: glibc, saying how to install
    assert launcher.use_fast_allocator() == "glibc"
    assert "pip install cmeel-mimalloc" in capsys.readouterr().err


def test_mimalloc_runs_without_purging_unless_the_user_set_it(fake_system, monkeypatch):
    fake_system["tcmalloc"] = None
    with pytest.raises(Reexec) as e:
        launcher.use_fast_allocator()
    assert e.value.env["MIMALLOC_PURGE_DELAY"] == "-1" and e.value.env["GPT3LAB_ALLOCATOR_REEXEC"] == "mimalloc"
    monkeypatch.setenv("MIMALLOC_PURGE_DELAY", "50")
    with pytest.raises(Reexec) as e:
        launcher.use_fast_allocator()
    assert e.value.env["MIMALLOC_PURGE_DELAY"] == "50"


def test_failed_preload_does_not_loop(fake_system, monkeypatch, capsys):
    monkeypatch.setenv("GPT3LAB_ALLOCATOR_REEXEC", "tcmalloc")   # we are the child, yet nothing is loaded
    assert launcher.use_fast_allocator() == "glibc"
    assert "preloading /sys/libtcmalloc_minimal.so.4 failed" in capsys.readouterr().err


def test_unknown_allocator_is_a_user_error(monkeypatch):
    monkeypatch.delenv(launcher.DISABLE_ENV, raising=False)
    monkeypatch.setenv(launcher.ENV, "jemalloc")
    with pytest.raises(UserError, match="GPT3LAB_ALLOCATOR='jemalloc'.*auto, tcmalloc, mimalloc, glibc"):
        launcher.requested()


def test_tune_glibc_sets_the_thresholds():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert launcher.tune_glibc() is True


def test_help_never_reexecs_nor_announces():
    assert wants_fast_allocator(["train", "--data", "d", "--out", "o"])
    assert not wants_fast_allocator(["train", "--help"]) and not wants_fast_allocator(["demo", "-h"])
    assert not wants_fast_allocator(["--help"]) and not wants_fast_allocator(["size", "demo"])
    for argv in (("--help",), ("train", "--help")):
        p = _run("-m", "gpt3lab", *argv, **{launcher.ENV: "mimalloc"})
        assert p.returncode == 0 and "usage: gpt3lab" in p.stdout, p.stderr
        assert "allocator" not in p.stderr
