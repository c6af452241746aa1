"""Fused rotary position embedding for packed q and k, in Triton (forward and backward).

    q_rot, k_rot = fused_rope(q, k, cos_table, sin_table, position_ids)
    fused_rope(q, k, cos_table, sin_table, position_ids, inplace=True)   # rotates q and k themselves

Rotate-half convention, exactly as encoder/rope.py: out = x * cos + rotate_half(x) * sin with
rotate_half(x) = cat(-x2, x1) and cos/sin `[positions, d]` gathered by each token's position id. Written
per half: out1 = x1 * cos1 - x2 * sin1, out2 = x2 * cos2 + x1 * sin2 (both table halves are read, so any
table works, not only cat(freqs, freqs)).

Out of place by default: q and k are typically strided views of the packed qkv `[T, 3, heads, d]` that autograd may
still need, so the kernel reads them through their strides and writes two new contiguous `[T, heads, d]`
tensors; the inputs are left untouched. One launch rotates q and k together, so each token's cos/sin rows
are gathered once and reused across all heads of both tensors. Arithmetic is fp32, rounded once on store
(the torch path rounds after every op in the input dtype).

`inplace=True` writes the rotation back into q and k (any token/head strides, unit feature stride), for
inference or for callers that own their q/k buffers: each program loads both halves of a row before
storing either, so reading and writing the same memory is safe. Under autograd the inputs are marked
dirty, so using them after the call sees the rotated values, as with any in-place op.

The backward is the same kernel: the rotation's transpose is out1 = g1 * cos1 + g2 * sin2,
out2 = g2 * cos2 - g1 * sin1, i.e. the forward with (sin1, sin2) replaced by (-sin2, -sin1).
Position ids are not range-checked on the device (that would need a host sync); the model checks
max_seqlen <= max_position_embeddings.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _utils
from ._utils import SUPPORTED_DTYPES, unit_stride_last

BLOCK_T = 32  # tokens per program: 64k tokens -> 2k programs, each looping over the heads


@triton.jit
def _rotate_one_head(X, OUT, rows, row_mask, cols, col_mask, cos1, cos2, sin1, sin2, stride_xt, stride_ot,
                     HALF: tl.constexpr):
    mask = row_mask[:, None] & col_mask[None, :]
    x_ptrs = X + rows[:, None] * stride_xt + cols[None, :]
    x1 = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    out_ptrs = OUT + rows[:, None] * stride_ot + cols[None, :]
    tl.store(out_ptrs, (x1 * cos1 - x2 * sin1).to(OUT.dtype.element_ty), mask=mask)
    tl.store(out_ptrs + HALF, (x2 * cos2 + x1 * sin2).to(OUT.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["total_tokens"])
def _rope_kernel(Q, K, Q_OUT, K_OUT, COS, SIN, POS, total_tokens, num_heads,
                 stride_qt, stride_qh, stride_kt, stride_kh, stride_qot, stride_qoh, stride_kot, stride_koh,
                 stride_table, HALF: tl.constexpr, HALF_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
                 BACKWARD: tl.constexpr, ROTATE_K: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # 64-bit: T * strides > 2^31
    row_mask = rows < total_tokens
    cols = tl.arange(0, HALF_PAD)
    col_mask = cols < HALF
    table_mask = row_mask[:, None] & col_mask[None, :]
    positions = tl.load(POS + rows, mask=row_mask, other=0).to(tl.int64)
    table_ptrs = positions[:, None] * stride_table + cols[None, :]
    cos1 = tl.load(COS + table_ptrs, mask=table_mask, other=0.0).to(tl.float32)
    cos2 = tl.load(COS + table_ptrs + HALF, mask=table_mask, other=0.0).to(tl.float32)
    sin1 = tl.load(SIN + table_ptrs, mask=table_mask, other=0.0).to(tl.float32)
    sin2 = tl.load(SIN + table_ptrs + HALF, mask=table_mask, other=0.0).to(tl.float32)
    if BACKWARD:  # transpose of the rotation
        sin1, sin2 = -sin2, -sin1
    for head in range(num_heads):
        _rotate_one_head(Q + head * stride_qh, Q_OUT + head * stride_qoh, rows, row_mask, cols, col_mask,
                         cos1, cos2, sin1, sin2, stride_qt, stride_qot, HALF)
        if ROTATE_K:
            _rotate_one_head(K + head * stride_kh, K_OUT + head * stride_koh, rows, row_mask, cols, col_mask,
                             cos1, cos2, sin1, sin2, stride_kt, stride_kot, HALF)


def _launch(q: Tensor, k: Tensor | None, cos_table: Tensor, sin_table: Tensor, position_ids: Tensor,
            backward: bool, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """Rotate q and k (k=None: q only) into new tensors, or into themselves when `inplace`."""
    rotate_k = k is not None
    k = q if k is None else k
    total_tokens, heads, head_dim = q.shape
    if inplace:
        q_out, k_out = q, k
    else:
        q, k = unit_stride_last(q), unit_stride_last(k)
        q_out = _utils.empty((total_tokens, heads, head_dim), q.dtype, q.device)
        # q only (the in-place Function's backward): the kernel never touches K_OUT, so allocate nothing for it
        k_out = _utils.empty((total_tokens, heads, head_dim), q.dtype, q.device) if rotate_k else q_out
    half = head_dim // 2
    _rope_kernel[(triton.cdiv(total_tokens, BLOCK_T),)](
        q, k, q_out, k_out, cos_table, sin_table, position_ids, total_tokens, heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), q_out.stride(0), q_out.stride(1),
        k_out.stride(0), k_out.stride(1), cos_table.stride(0),
        HALF=half, HALF_PAD=triton.next_power_of_2(half), BLOCK_T=BLOCK_T, BACKWARD=backward, ROTATE_K=rotate_k)
    return q_out, k_out


class FusedRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, cos_table: Tensor, sin_table: Tensor,
                position_ids: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(cos_table, sin_table, position_ids)
        return _launch(q, k, cos_table, sin_table, position_ids, backward=False)

    @staticmethod
    def backward(ctx, grad_q: Tensor, grad_k: Tensor):
        # grads of an output autograd did not need arrive as zeros (materialised), so both are tensors
        cos_table, sin_table, position_ids = ctx.saved_tensors
        dq, dk = _launch(grad_q, grad_k, cos_table, sin_table, position_ids, backward=True)
        return dq, dk, None, None, None


class FusedRopeInplace(torch.autograd.Function):
    """One tensor rotated in place. Autograd cannot mark two dirty outputs of one Function when they are
    views (q and k of a packed qkv), so under autograd q and k each take one launch of this."""

    @staticmethod
    def forward(ctx, x: Tensor, cos_table: Tensor, sin_table: Tensor, position_ids: Tensor) -> Tensor:
        ctx.save_for_backward(cos_table, sin_table, position_ids)
        ctx.mark_dirty(x)
        return _launch(x, None, cos_table, sin_table, position_ids, backward=False, inplace=True)[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos_table, sin_table, position_ids = ctx.saved_tensors
        return _launch(grad, None, cos_table, sin_table, position_ids, backward=True)[0], None, None, None


def fused_rope(q: Tensor, k: Tensor, cos_table: Tensor, sin_table: Tensor,
               position_ids: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """q, k `[T, heads, d]` (any token/head strides), cos/sin tables `[positions, d]` (fp32),
    position_ids `[T]` -> rotated q, k in the input dtype: new contiguous tensors, or q and k themselves
    with `inplace=True`. Differentiable in q and k only (the tables are derived buffers)."""
    if q.dim() != 3 or q.shape != k.shape:
        raise ValueError(f"q, k: expected equal [T, heads, d] shapes, got {tuple(q.shape)}, {tuple(k.shape)}")
    head_dim = q.shape[-1]
    if head_dim % 2:
        raise ValueError(f"head_dim: {head_dim} must be even for RoPE")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype:
        raise ValueError(f"q, k: expected one dtype of {SUPPORTED_DTYPES}, got {q.dtype}, {k.dtype}")
    if cos_table.shape != sin_table.shape or cos_table.dim() != 2 or cos_table.shape[1] != head_dim:
        raise ValueError(f"cos_table, sin_table: expected [positions, {head_dim}], got "
                         f"{tuple(cos_table.shape)}, {tuple(sin_table.shape)}")
    if cos_table.stride(1) != 1 or sin_table.stride() != cos_table.stride():
        raise ValueError("cos_table, sin_table: expected contiguous tables with the same strides")
    if cos_table.device != q.device or position_ids.device != q.device:
        raise ValueError(f"cos_table, position_ids: expected on {q.device}, got {cos_table.device}, "
                         f"{position_ids.device}")
    if position_ids.shape != q.shape[:1]:
        raise ValueError(f"position_ids: shape {tuple(position_ids.shape)} != [T] = {tuple(q.shape[:1])}")
    if position_ids.dtype.is_floating_point or position_ids.dtype.is_complex or position_ids.dtype == torch.bool:
        raise ValueError(f"position_ids: expected an integer tensor, got {position_ids.dtype}")
    if not position_ids.is_contiguous():  # the kernel reads it with unit stride
        raise ValueError(f"position_ids: expected a contiguous tensor, got stride {position_ids.stride()}")
    if not inplace:
        return FusedRope.apply(q, k, cos_table, sin_table, position_ids)
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("q, k: inplace=True needs unit stride along the feature dim")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return (FusedRopeInplace.apply(q, cos_table, sin_table, position_ids),
                FusedRopeInplace.apply(k, cos_table, sin_table, position_ids))
    return _launch(q, k, cos_table, sin_table, position_ids, backward=False, inplace=True)  # one launch
