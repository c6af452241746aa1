"""Small helpers shared by the Triton kernels (launch-side only; nothing here is jitted)."""

from __future__ import annotations

import os

import torch
import triton

# Under TRITON_INTERPRET=1 the kernels run as NumPy on CPU tensors (how CI tests them without a GPU).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def upcast_tiles(dtype: torch.dtype) -> bool:
    """The interpreter gets bf16 arithmetic wrong (NumPy has no bf16), so kernels upcast bf16 tiles to fp32
    right after loading when interpreting. On a GPU tiles stay in bf16 for the tensor cores."""
    return INTERPRET and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get IEEE dots (PyTorch's fp32 default); tf32 would cost ~3 significant digits."""
    return "ieee" if dtype == torch.float32 else "tf32"


def seqlen_bucket(max_seqlen: int) -> int:
    """Autotune key for a batch: the next power of two of its longest sequence. Keying on the exact length
    would re-tune for every new batch of a variable-length corpus."""
    return max(16, triton.next_power_of_2(int(max_seqlen)))


def unit_stride_last(x: torch.Tensor) -> torch.Tensor:
    """Kernels take any token/head strides but need unit stride along the feature dim."""
    return x if x.stride(-1) == 1 else x.contiguous()


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation of every kernel output. The tests swap this for a NaN-filled one so that any element a
    kernel forgets to write fails the comparison instead of passing on leftover memory."""
    return torch.empty(shape, dtype=dtype, device=device)
