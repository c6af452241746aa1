"""Kernel tests run on a GPU when there is one, and in Triton's interpreter (NumPy, on CPU tensors) when not.

The root conftest sets TRITON_INTERPRET=1 when there is no GPU (it must precede the first `import triton`,
which third-party packages may do at collection).
"""

import os

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
