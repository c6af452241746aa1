"""Shared by the kernel tests: device choice and the flash-attention style accuracy check."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA: too slow for Triton's CPU interpreter")

FP32_ATOL, FP32_RTOL = 2e-5, 2e-4
ERROR_FLOOR = 1e-5  # absolute slack where the low-precision reference happens to be exact (e.g. length 1)


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, in float64; NaN anywhere (an unwritten output) gives NaN, failing every <=."""
    diff = (actual.double() - expected.double()).abs()
    return float("nan") if diff.isnan().any() else diff.max().item()


def check_accuracy(name: str, kernel: torch.Tensor, exact: torch.Tensor, same_math_low_precision: torch.Tensor | None,
                   factor: float) -> None:
    """fp32: fixed tolerances against the float64 answer. fp16/bf16: the kernel's error against float64 may be
    at most `factor` x the error the plain PyTorch math makes in the same low precision."""
    assert kernel.shape == exact.shape, f"{name}: shape {tuple(kernel.shape)} != {tuple(exact.shape)}"
    error = max_error(kernel, exact)
    if kernel.dtype == torch.float32:
        bound = FP32_ATOL + FP32_RTOL * exact.abs().max().item()
        assert error <= bound, f"{name}: fp32 max error {error:.3g} > {bound:.3g}"
        return
    baseline = max_error(same_math_low_precision, exact)
    bound = factor * baseline + ERROR_FLOOR
    assert error <= bound, (f"{name}: {kernel.dtype} max error {error:.3g} > {factor} x {baseline:.3g} "
                            f"(PyTorch in {kernel.dtype}) + {ERROR_FLOOR}")
