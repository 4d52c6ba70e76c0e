"""Fixtures shared by every test directory."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole run (restored at the end).

    The tests' tensors are small: extra threads only add wake-up latency (8x slower on a
    loaded 2-core machine), and a fixed thread count keeps timings and results comparable.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
