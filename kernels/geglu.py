"""Fused gated activation (GeGLU, and its tanh-GELU and SiLU siblings) in Triton, forward and backward.

    hidden = geglu(up_gate)                        # act = exact erf GELU (mGTE's "gelu")
    hidden = glu(up_gate, activation="silu")       # gelu | gelu_tanh | silu, as ModelConfig.hidden_act

up_gate `[T, 2I]` is the bias-free up_gate_proj output: the first I columns are `up`, the last I are `gate`;
the result is act(gate) * up `[T, I]`, as encoder.model.GatedMLP computes it.

Why fuse (see kernels/README.md for the measurement): unfused, PyTorch moves 5 [T, I] tensors forward
(act reads gate, writes act; mul reads 2, writes 1) and ~13 backward (two muls, the activation backward, and
the copy that assembles d(up_gate)); fused it is 3 and 5. At mGTE-base shapes (I = 3072) that is most of the
non-matmul memory traffic of a layer. The fused op also saves only its input for backward, not the
[T, I] activation autograd would otherwise keep per layer. Arithmetic is fp32, rounded once on store.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _utils
from ._utils import SUPPORTED_DTYPES

GLU_ACTIVATIONS = ("gelu", "gelu_tanh", "silu")
GLU_BLOCK_T = 4  # rows per program
GLU_BLOCK_I = 1024  # columns per program: 4 x 1024 elements, 16 per thread at 4 warps
_INV_SQRT2 = tl.constexpr(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))
_SQRT_2_OVER_PI = tl.constexpr(math.sqrt(2.0 / math.pi))
_TANH_COEF = tl.constexpr(0.044715)


@triton.jit
def _act_and_grad(gate, ACTIVATION: tl.constexpr):
    """act(gate) and d act / d gate, fp32. The forward kernel drops the derivative and the compiler with it."""
    if ACTIVATION == "gelu":  # x * Phi(x); d/dx = Phi(x) + x * phi(x)
        cdf = 0.5 * (1.0 + tl.math.erf(gate * _INV_SQRT2))
        act = gate * cdf
        grad = cdf + gate * _INV_SQRT_2PI * tl.exp(-0.5 * gate * gate)
    elif ACTIVATION == "gelu_tanh":  # 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
        inner = _SQRT_2_OVER_PI * (gate + _TANH_COEF * gate * gate * gate)
        tanh = 2.0 * tl.sigmoid(2.0 * inner) - 1.0  # saturates cleanly to +-1, unlike (e^2u - 1) / (e^2u + 1)
        act = 0.5 * gate * (1.0 + tanh)
        d_inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_COEF * gate * gate)
        grad = 0.5 * (1.0 + tanh) + 0.5 * gate * (1.0 - tanh * tanh) * d_inner
    else:  # silu: x * s(x); d/dx = s(x) (1 + x (1 - s(x)))
        sig = tl.sigmoid(gate)
        act = gate * sig
        grad = sig * (1.0 + gate * (1.0 - sig))
    return act, grad


@triton.jit
def _tile(pid_t, pid_i, total_rows, width, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # 64-bit: T * 2I passes 2^31 at 350k tokens
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < total_rows)[:, None] & (cols < width)[None, :]
    return rows, cols, mask


@triton.jit(do_not_specialize=["total_rows"])
def _glu_fwd_kernel(UP_GATE, OUT, total_rows, width, stride_in, stride_out, ACTIVATION: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr):
    rows, cols, mask = _tile(tl.program_id(0), tl.program_id(1), total_rows, width, BLOCK_T, BLOCK_I)
    up_ptrs = UP_GATE + rows[:, None] * stride_in + cols[None, :]
    up = tl.load(up_ptrs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(up_ptrs + width, mask=mask, other=0.0).to(tl.float32)
    act, _ = _act_and_grad(gate, ACTIVATION)
    tl.store(OUT + rows[:, None] * stride_out + cols[None, :], (act * up).to(OUT.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["total_rows"])
def _glu_bwd_kernel(UP_GATE, GRAD_OUT, GRAD_IN, total_rows, width, stride_in, stride_grad_out, stride_grad_in,
                    ACTIVATION: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr):
    rows, cols, mask = _tile(tl.program_id(0), tl.program_id(1), total_rows, width, BLOCK_T, BLOCK_I)
    up_ptrs = UP_GATE + rows[:, None] * stride_in + cols[None, :]
    up = tl.load(up_ptrs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(up_ptrs + width, mask=mask, other=0.0).to(tl.float32)
    grad_out = tl.load(GRAD_OUT + rows[:, None] * stride_grad_out + cols[None, :], mask=mask, other=0.0)
    grad_out = grad_out.to(tl.float32)
    act, act_grad = _act_and_grad(gate, ACTIVATION)
    grad_ptrs = GRAD_IN + rows[:, None] * stride_grad_in + cols[None, :]
    tl.store(grad_ptrs, (grad_out * act).to(GRAD_IN.dtype.element_ty), mask=mask)  # d up
    tl.store(grad_ptrs + width, (grad_out * up * act_grad).to(GRAD_IN.dtype.element_ty), mask=mask)  # d gate


def _grid(total_rows: int, width: int) -> tuple[int, int]:
    return triton.cdiv(total_rows, GLU_BLOCK_T), triton.cdiv(width, GLU_BLOCK_I)


class FusedGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, up_gate: Tensor, activation: str) -> Tensor:
        if up_gate.stride(-1) != 1:
            up_gate = up_gate.contiguous()
        total_rows, width = up_gate.shape[0], up_gate.shape[1] // 2
        out = _utils.empty((total_rows, width), up_gate.dtype, up_gate.device)
        _glu_fwd_kernel[_grid(total_rows, width)](up_gate, out, total_rows, width, up_gate.stride(0), out.stride(0),
                                                  ACTIVATION=activation, BLOCK_T=GLU_BLOCK_T, BLOCK_I=GLU_BLOCK_I)
        ctx.save_for_backward(up_gate)
        ctx.activation = activation
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (up_gate,) = ctx.saved_tensors
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        total_rows, width = grad_out.shape
        grad_in = _utils.empty((total_rows, 2 * width), up_gate.dtype, up_gate.device)
        _glu_bwd_kernel[_grid(total_rows, width)](up_gate, grad_out, grad_in, total_rows, width, up_gate.stride(0),
                                                  grad_out.stride(0), grad_in.stride(0), ACTIVATION=ctx.activation,
                                                  BLOCK_T=GLU_BLOCK_T, BLOCK_I=GLU_BLOCK_I)
        return grad_in, None


def glu(up_gate: Tensor, activation: str = "gelu") -> Tensor:
    """`[T, 2I]` -> act(gate) * up `[T, I]` (up = first I columns, gate = last I), differentiable."""
    if activation not in GLU_ACTIVATIONS:
        raise ValueError(f"activation: expected one of {GLU_ACTIVATIONS}, got {activation!r}")
    if up_gate.dim() != 2 or up_gate.shape[1] % 2:
        raise ValueError(f"up_gate: expected [T, 2I], got shape {tuple(up_gate.shape)}")
    if up_gate.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"up_gate: expected one dtype of {SUPPORTED_DTYPES}, got {up_gate.dtype}")
    return FusedGLU.apply(up_gate, activation)


def geglu(up_gate: Tensor) -> Tensor:
    """GeGLU with exact erf GELU: mGTE's `hidden_act: gelu`."""
    return glu(up_gate, "gelu")
