"""Fused GLU (GeGLU / gelu_tanh / SiLU) vs act(gate) * up in float64 and in the input dtype."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import DEVICE, check_accuracy

from kernels.geglu import geglu, glu
from kernels.reference import ACTIVATIONS, reference_glu

# (tokens, I): a single element, odd sizes, and I > 1024 so a row spans several column blocks
SHAPES = [(1, 1), (37, 300), (5, 1100)]


def glu_and_grad(fn, up_gate, grad):
    up_gate = up_gate.detach().requires_grad_()
    out = fn(up_gate)
    out.backward(grad.to(out.dtype))
    return out.detach(), up_gate.grad


def inputs(tokens, width, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # scale 3: gates reach the tails where the activations bend and saturate
    up_gate = (3 * torch.randn(tokens, 2 * width, generator=generator)).to(DEVICE, dtype)
    grad = torch.randn(tokens, width, generator=generator).to(DEVICE, dtype)
    return up_gate, grad


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # NumPy in the interpreter; the result is exact
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_matches_reference(shape, activation, dtype):
    up_gate, grad = inputs(*shape, dtype)
    out, d_in = glu_and_grad(lambda x: glu(x, activation), up_gate, grad)
    exact_out, exact_d_in = glu_and_grad(lambda x: reference_glu(x, activation), up_gate.double(), grad)

    def torch_path(x):  # encoder.model.GatedMLP's unfused math, in the input dtype
        up, gate = x.chunk(2, dim=-1)
        return ACTIVATIONS[activation](gate) * up

    low_out, low_d_in = glu_and_grad(torch_path, up_gate, grad)
    assert out.dtype == dtype and out.shape == (shape[0], shape[1])
    check_accuracy("out", out, exact_out, low_out, factor=2)
    check_accuracy("d_up_gate", d_in, exact_d_in, low_d_in, factor=2)


def test_strided_rows_and_geglu_alias():
    """A row stride wider than 2I (a column slice of a bigger buffer) reads the right columns."""
    buffer, grad = inputs(9, 70, torch.float32, seed=1)
    wide = torch.cat([buffer, torch.randn(9, 6, device=DEVICE)], dim=1)
    up_gate = wide[:, :140]
    assert up_gate.stride(0) == 146
    out = geglu(up_gate)
    torch.testing.assert_close(out, reference_glu(up_gate, "gelu", torch.float32), atol=1e-5, rtol=1e-5)


def test_rejects_unknown_activation():
    up_gate, _ = inputs(2, 4, torch.float32)
    with pytest.raises(ValueError, match="activation"):
        glu(up_gate, "relu")


def test_kernel_implements_every_activation_of_the_table():
    """One activation table (kernels/reference.py): the model accepts exactly what the fused kernel computes."""
    from kernels.geglu import GLU_ACTIVATIONS

    assert tuple(ACTIVATIONS) == GLU_ACTIVATIONS
