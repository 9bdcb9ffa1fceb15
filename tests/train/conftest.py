"""Training tests: one intra-op thread (tiny_data is in tests/conftest.py)."""
import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test machine is small and shared: one intra-op thread avoids oversubscription stalls."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def teacher(tiny_data, tmp_path_factory):
    """A distillation teacher, as a run dir: the tiny preset (2 layers, context 32) trained 30 steps."""
    from gpt3lab.train.cli import train

    out = tmp_path_factory.mktemp("teacher") / "run"
    train(tiny_data, out, preset="tiny", max_steps=30, progress=False,
          overrides=["model.context=32", "precision=fp32", "peak_flops=1e12", "eval_batches=1"])
    return out
