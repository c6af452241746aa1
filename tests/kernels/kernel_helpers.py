"""Shared by the kernel tests: device choice and the flash-attention style accuracy check."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA: too slow for Triton's CPU interpreter")

FP32_ATOL, FP32_RTOL = 2e-5, 2e-4
CANCELLATION = 1e-6  # absolute; far below fp16/bf16 resolution at the O(1) scale of the test tensors


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
    if kernel.dtype == torch.bfloat16 and not HAS_CUDA:
        # Triton's interpreter converts fp32 -> bf16 on store by truncation (round toward zero, up to 1 ulp),
        # GPUs round to nearest (1/2 ulp): the same kernel result may sit twice as far from the exact answer.
        factor *= 2
    baseline = max_error(same_math_low_precision, exact)
    # plus one unit of the last place at the largest magnitude: storing the result rounds once, and with few
    # elements (a 1x1 GLU) PyTorch's error can be 0 by luck. CANCELLATION covers exact zeros: a 1-token
    # sequence has dq == 0, which the kernel reaches as dp - delta, two fp32 sums of the same products.
    slack = torch.finfo(kernel.dtype).eps * exact.abs().max().item() + CANCELLATION
    bound = factor * baseline + slack
    assert error <= bound, (f"{name}: {kernel.dtype} max error {error:.3g} > {factor} x {baseline:.3g} "
                            f"(PyTorch in {kernel.dtype}) + {slack:.3g}")
