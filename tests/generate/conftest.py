"""Fixtures shared by the generator tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Train on one thread, as the generator's Ray tasks do (the same kernels whatever the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
