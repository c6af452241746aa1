"""Plain PyTorch twins of the Triton kernels: the definitions the tests hold the kernels to.

Each takes a `compute_dtype`: float64 gives the "true" answer a kernel is judged against; passing the
kernel's own low precision gives the error the same math makes in that precision (the yardstick for the
flash-attention style tolerances in tests/kernels). Outputs are returned in the compute dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                               compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """Bidirectional softmax attention one sequence at a time: q, k, v `[T, heads, d]` -> `[T, heads, d]`.
    `max_seqlen` is accepted for signature parity and checked, not needed."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    offsets = cu_seqlens.tolist()
    assert max(e - s for s, e in zip(offsets[:-1], offsets[1:])) <= max_seqlen, "max_seqlen too small"
    outputs = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        qs, ks, vs = (x[start:end].transpose(0, 1).to(compute_dtype) for x in (q, k, v))  # [heads, L, d]
        scores = (qs @ ks.transpose(-1, -2)) * scale  # [heads, L, L]
        # softmax in at least fp32, as every fused kernel does; the matmuls stay in compute_dtype
        probs = torch.softmax(scores.float() if compute_dtype in (torch.float16, torch.bfloat16) else scores,
                              dim=-1).to(compute_dtype)
        outputs.append((probs @ vs).transpose(0, 1))
    return torch.cat(outputs, dim=0)


def reference_rope(q: Tensor, k: Tensor, cos_table: Tensor, sin_table: Tensor, position_ids: Tensor,
                   compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Rotate-half RoPE exactly as encoder/rope.py: x * cos + rotate_half(x) * sin, tables gathered by
    position id. q, k `[T, heads, d]`; tables `[positions, d]`."""
    cos = cos_table[position_ids].to(compute_dtype)[:, None, :]  # [T, 1, d]
    sin = sin_table[position_ids].to(compute_dtype)[:, None, :]

    def rotate(x: Tensor) -> Tensor:
        x = x.to(compute_dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    return rotate(q), rotate(k)


GLU_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact erf form
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def reference_glu(up_gate: Tensor, activation: str = "gelu", compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """`[T, 2I]` (first I columns = up, last I = gate) -> act(gate) * up `[T, I]`, as encoder.model.GatedMLP."""
    up, gate = up_gate.to(compute_dtype).chunk(2, dim=-1)
    return GLU_ACTIVATIONS[activation](gate) * up
