import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # the tiny models here are overhead-bound; on a shared 2-core box, OpenMP barriers across two
    # busy cores make them 10-30x slower than one thread
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
