"""Rotary position embedding (rotate-half convention) for packed tokens.

cos/sin tables are `[positions, head_dim]` built as `cat(freqs, freqs)`, and are gathered by each token's
own position id, so positions restart at 0 in every sequence of an unpadded batch.

Fixed NTK scaling reproduces the released mGTE code exactly: with factor f > 1 every position uses base
`theta * f` and `inv_freq` further divided by `f ** (2 / head_dim)`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .kernel_switches import rotate_half, use_triton_kernel


def rope_inv_freq(head_dim: int, theta: float, ntk_factor: float = 1.0,
                  device: torch.device | str = "cpu") -> Tensor:
    """`[head_dim / 2]` float32 inverse frequencies, computed in the same order as the reference code."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    if ntk_factor == 1.0:
        return 1.0 / (theta ** exponents)
    inv_freq = 1.0 / ((theta * ntk_factor) ** exponents)
    return inv_freq / ntk_factor ** (2 / head_dim)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x `[T, heads, d]`; cos, sin `[T, d]` (already gathered by position). Computed in x's dtype."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin tables; `forward(q, k, position_ids)` rotates packed q and k."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, ntk_factor: float = 1.0,
                 impl: str = "auto") -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = theta
        self.ntk_factor = ntk_factor
        self.impl = impl
        self._build(torch.device("cpu"))

    def _build(self, device: torch.device) -> None:
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.ntk_factor, device=device)
        positions = torch.arange(self.max_positions, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        table = torch.cat((freqs, freqs), dim=-1)  # [P, d]
        # non-persistent: derived from the config, never stored in checkpoints
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos_table", table.cos(), persistent=False)
        self.register_buffer("sin_table", table.sin(), persistent=False)

    def set_theta(self, theta: float, ntk_factor: float | None = None) -> None:
        """Change the base (stage 2 of pre-training, or revNTK at inference) and rebuild the tables."""
        self.theta = theta
        if ntk_factor is not None:
            self.ntk_factor = ntk_factor
        self._build(self.cos_table.device)

    def forward(self, q: Tensor, k: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """q, k `[T, heads, d]` -> rotated q, k (new tensors; inputs are left as they are)."""
        if use_triton_kernel(self.impl, q):
            from kernels.rope import fused_rope  # noqa: PLC0415  (needs triton)

            return fused_rope(q, k, self.cos_table, self.sin_table, position_ids)
        cos = self.cos_table[position_ids].to(q.dtype)
        sin = self.sin_table[position_ids].to(q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
