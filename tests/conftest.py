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


@pytest.fixture
def on_test_device():
    """XREFLECT_TEST_DEVICE=cuda makes cuda torch's default device for the tests that use this
    fixture (model and metric tests on a GPU machine: benchmarks/gpu_check.sh); cpu otherwise.
    The training tests need no fixture: train_grid picks cuda by itself wherever there is one."""
    import torch

    name = os.environ.get("XREFLECT_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"XREFLECT_TEST_DEVICE={name} but torch sees no CUDA device")
    before = torch.get_default_device()
    torch.set_default_device(name)
    yield torch.device(name)
    torch.set_default_device(before)
