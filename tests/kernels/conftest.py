"""Kernel tests run on a GPU when there is one, and in Triton's interpreter (NumPy, on CPU tensors) when not.

TRITON_INTERPRET must be set before triton is first imported, which is why it happens here, at collection,
and not inside a fixture.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"



@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    """Kernel outputs start as NaN, so an element no program writes fails the comparison."""
    import kernels._utils as utils

    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(utils, "empty", nan_filled)
