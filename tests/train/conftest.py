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
