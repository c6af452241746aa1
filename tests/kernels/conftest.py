"""Kernel tests run on a GPU when there is one, and in Triton's interpreter (NumPy, on CPU tensors) when not.

The root conftest sets TRITON_INTERPRET=1 when there is no GPU (it must precede the first `import triton`,
which third-party packages may do at collection).
"""

import os
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
assert HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET on CPU"


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element no program writes fails the comparison."""
    import kernels._utils as utils

    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(utils, "empty", nan_filled)


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's --dist loadgroup runs a group on one worker")


def pytest_collection_modifyitems(config, items):
    """Group kernel cases by (dtype, head dim): under pytest-xdist with --dist loadgroup (scripts/gpu_check.py on
    a GPU) each worker then compiles each kernel variant once, instead of every worker compiling all of them."""
    here = Path(__file__).parent
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if here in Path(item.path).parents and "dtype" in params and "head_dim" in params:
            item.add_marker(pytest.mark.xdist_group(f"{params['dtype']}-{params['head_dim']}"))


@pytest.fixture(autouse=True)
def release_cuda_memory():
    """Hand cached blocks back after each case: parallel workers (pytest-xdist on one GPU) each peak near 10 GB
    at the 8192-token float64 reference, and a worker's cache would otherwise keep its peak for the whole run."""
    yield
    if HAS_CUDA:
        torch.cuda.empty_cache()
