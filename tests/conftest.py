import pytest
import torch

# Small, deterministic CPU runs: tests are about correctness, not speed.
torch.set_num_threads(1)  # tiny tensors: threads only add overhead


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
