"""Distillation tests: one intra-op thread; a tiny teacher trained on tiny_data (tests/conftest.py)."""
import pytest
import torch

# the student of every test: the tiny preset, one layer instead of the teacher's two
STUDENT = ["model.n_layer=1", "model.context=32", "precision=fp32", "peak_flops=1e12", "eval_batches=2",
           "eval_every=5"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def teacher(tiny_data, tmp_path_factory):
    """A run dir: the tiny preset (2 layers, context 32) trained 30 steps on tiny_data."""
    from gpt3lab.train.cli import train

    out = tmp_path_factory.mktemp("teacher") / "run"
    train(tiny_data, out, preset="tiny", max_steps=30, progress=False,
          overrides=["model.context=32", "precision=fp32", "peak_flops=1e12", "eval_batches=1"])
    return out
