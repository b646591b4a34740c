import os

import pytest
import torch

# Small, deterministic CPU tests: two threads like CI, a fixed seed per test.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
