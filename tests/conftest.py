import os

import pytest

# Tests never reach a model hub: the packaged MiniLM and models built in the tests are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def one_torch_thread():
    """Training tests run single-threaded: results stay reproducible and CI's 2 cores stay free."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
