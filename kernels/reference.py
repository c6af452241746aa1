"""Plain PyTorch definitions: the encoder's CPU path and the twins the Triton kernels are held to.

Each name here is defined once for the whole project:
- `ACTIVATIONS` (the GLU activation table), `rotate_half` and `reference_attention` are what `encoder/` runs
  (the `reference` attention backend, the torch RoPE and GLU paths). An export pastes this file into its
  single `modeling_longenc.py` (encoder/export/bundle.py), so it may import nothing but torch.
- `reference_varlen_attention`, `reference_rope` and `reference_glu` take a `compute_dtype`: float64 gives the
  "true" answer a kernel is judged against; the kernel's own low precision gives the error the same math
  makes in that precision (the yardstick for the flash-attention style tolerances in tests/kernels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact erf form, as mGTE's "gelu"
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def rotate_half(x: Tensor) -> Tensor:
    """RoPE's rotate-half: (x1, x2) -> (-x2, x1) over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def reference_varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                               compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """Bidirectional softmax attention one sequence at a time: q, k, v `[T, heads, d]` -> `[T, heads, d]` in
    `compute_dtype` (matmuls in it, softmax in at least float32, as every fused kernel does). `max_seqlen` is
    accepted for signature parity, not needed."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    offsets = cu_seqlens.tolist()
    lengths = [end - start for start, end in zip(offsets[:-1], offsets[1:])]
    outputs = []
    # torch.split (not slicing) so the backward is one concatenation, not a full-size buffer per sequence
    for qs, ks, vs in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
        qs, ks, vs = (x.transpose(0, 1).to(compute_dtype) for x in (qs, ks, vs))  # [heads, L, d]
        scores = (qs @ ks.transpose(-1, -2)) * scale  # [heads, L, L]
        probs = torch.softmax(scores.float() if compute_dtype in (torch.float16, torch.bfloat16) else scores,
                              dim=-1).to(compute_dtype)
        outputs.append((probs @ vs).transpose(0, 1))
    return torch.cat(outputs, dim=0)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """The `reference` backend of encoder/attention.py: float32 math, output in q's dtype."""
    return reference_varlen_attention(q, k, v, cu_seqlens, max_seqlen, compute_dtype=torch.float32).to(q.dtype)


def reference_rope(q: Tensor, k: Tensor, cos_table: Tensor, sin_table: Tensor, position_ids: Tensor,
                   compute_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Rotate-half RoPE exactly as encoder/rope.py: x * cos + rotate_half(x) * sin, tables gathered by
    position id. q, k `[T, heads, d]`; tables `[positions, d]`."""
    cos = cos_table[position_ids].to(compute_dtype)[:, None, :]  # [T, 1, d]
    sin = sin_table[position_ids].to(compute_dtype)[:, None, :]

    def rotate(x: Tensor) -> Tensor:
        x = x.to(compute_dtype)
        return x * cos + rotate_half(x) * sin

    return rotate(q), rotate(k)


def reference_glu(up_gate: Tensor, activation: str = "gelu", compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """`[T, 2I]` (first I columns = up, last I = gate) -> act(gate) * up `[T, I]`, as encoder.model.GatedMLP."""
    up, gate = up_gate.to(compute_dtype).chunk(2, dim=-1)
    return ACTIVATIONS[activation](gate) * up
