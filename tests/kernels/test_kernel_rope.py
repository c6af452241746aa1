"""Fused RoPE vs the rotate-half reference (and vs encoder/rope.py's own torch path)."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import DEVICE, check_accuracy

from encoder.batch import cu_seqlens_from_lengths, position_ids_from_cu_seqlens
from encoder.rope import RotaryEmbedding, apply_rotary
from kernels.reference import reference_rope
from kernels.rope import fused_rope

LENGTH_SETS = {"one-token": [1], "seven": [7], "129": [129], "mixed": [1, 300, 17, 64]}


def setup(lengths, heads, head_dim, dtype, ntk_factor=1.0, seed=0):
    rotary = RotaryEmbedding(head_dim, 512, theta=10000.0, ntk_factor=ntk_factor, impl="torch").to(DEVICE)
    total = sum(lengths)
    positions = position_ids_from_cu_seqlens(cu_seqlens_from_lengths(lengths, DEVICE), total)
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(total, 3, heads, head_dim, generator=generator).to(DEVICE, dtype)
    grads = torch.randn(2, total, heads, head_dim, generator=generator).to(DEVICE, dtype)
    return rotary, positions, qkv, grads


def rotate_and_grads(fn, qkv, grads):
    """fn(q, k) -> (q_rot, k_rot); q, k are views of packed qkv, as in the model."""
    qkv = qkv.detach().requires_grad_()
    q_rot, k_rot = fn(qkv[:, 0], qkv[:, 1])
    ((q_rot * grads[0].to(q_rot.dtype)).sum() + (k_rot * grads[1].to(k_rot.dtype)).sum()).backward()
    return (q_rot.detach(), k_rot.detach()), (qkv.grad[:, 0], qkv.grad[:, 1])


@pytest.mark.parametrize("lengths", list(LENGTH_SETS.values()), ids=list(LENGTH_SETS))
@pytest.mark.parametrize("head_dim", [32, 64, 128, 12])  # 12: half 6 is not a power of two (masked lanes)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_matches_reference(lengths, head_dim, dtype):
    rotary, positions, qkv, grads = setup(lengths, 3, head_dim, dtype)
    tables = (rotary.cos_table, rotary.sin_table, positions)
    outs, dins = rotate_and_grads(lambda q, k: fused_rope(q, k, *tables), qkv, grads)
    exact_outs, exact_dins = rotate_and_grads(lambda q, k: reference_rope(q, k, *tables), qkv.double(), grads)

    def torch_path(q, k):  # what encoder/rope.py computes without the kernel, in the input dtype
        cos, sin = (t[positions].to(q.dtype) for t in (rotary.cos_table, rotary.sin_table))
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

    low_outs, low_dins = rotate_and_grads(torch_path, qkv, grads)
    for name, kernel, exact, low in zip(("q_rot", "k_rot", "dq", "dk"), (*outs, *dins), (*exact_outs, *exact_dins),
                                        (*low_outs, *low_dins)):
        assert kernel.dtype == dtype
        check_accuracy(name, kernel, exact, low, factor=2)


def test_inputs_untouched_and_outputs_new():
    """Out of place by contract: q, k (views of qkv) keep their values; outputs are fresh contiguous tensors."""
    rotary, positions, qkv, _ = setup([5, 40], 2, 32, torch.float32, ntk_factor=4.0)
    before = qkv.clone()
    q_rot, k_rot = fused_rope(qkv[:, 0], qkv[:, 1], rotary.cos_table, rotary.sin_table, positions)
    assert torch.equal(qkv, before)
    assert q_rot.is_contiguous() and k_rot.is_contiguous()
    assert q_rot.data_ptr() != qkv.data_ptr() and not torch.equal(q_rot, qkv[:, 0])


@pytest.mark.parametrize("lengths", [[1], [7], [1, 300, 17, 64]], ids=["one-token", "seven", "mixed"])
def test_inplace_rotates_the_inputs_and_back_propagates(lengths):
    """inplace=True: q and k (strided views of qkv, as in the model) hold the rotation afterwards, equal to
    the reference, and gradients through the in-place op reach the tensor they were cut from."""
    rotary, positions, qkv, grads = setup(lengths, 3, 64, torch.float32, ntk_factor=4.0)
    tables = (rotary.cos_table, rotary.sin_table, positions)
    exact_outs, exact_dins = rotate_and_grads(lambda q, k: reference_rope(q, k, *tables), qkv.double(), grads)
    leaf = qkv.detach().requires_grad_()
    work = leaf * 1.0  # a non-leaf buffer autograd lets us write into
    q_rot, k_rot = fused_rope(work[:, 0], work[:, 1], *tables, inplace=True)
    assert q_rot.data_ptr() == work[:, 0].data_ptr() and k_rot.data_ptr() == work[:, 1].data_ptr()
    torch.testing.assert_close(work[:, 0].double(), exact_outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(work[:, 1].double(), exact_outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(work[:, 2], qkv[:, 2])  # v untouched
    ((q_rot * grads[0]).sum() + (k_rot * grads[1]).sum()).backward()
    torch.testing.assert_close(leaf.grad[:, 0].double(), exact_dins[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(leaf.grad[:, 1].double(), exact_dins[1], atol=1e-5, rtol=1e-5)
    plain = qkv.clone()  # without autograd: one launch rotates both
    fused_rope(plain[:, 0], plain[:, 1], *tables, inplace=True)
    torch.testing.assert_close(plain[:, :2], work[:, :2].detach(), atol=0, rtol=0)
    with pytest.raises(ValueError, match="unit stride"):
        strided = qkv[:, :2].transpose(2, 3).contiguous().transpose(2, 3)  # same shape, feature stride != 1
        fused_rope(strided[:, 0], strided[:, 1], *tables, inplace=True)


def test_rotary_embedding_module_uses_kernel_when_asked():
    """encoder.rope.RotaryEmbedding(impl='triton') agrees with impl='torch' (NTK-scaled tables included)."""
    _, positions, qkv, _ = setup([1, 33, 70], 2, 64, torch.float32)
    by_kernel = RotaryEmbedding(64, 512, 20000.0, ntk_factor=8.0, impl="triton").to(DEVICE)
    by_torch = RotaryEmbedding(64, 512, 20000.0, ntk_factor=8.0, impl="torch").to(DEVICE)
    for kernel, plain in zip(by_kernel(qkv[:, 0], qkv[:, 1], positions), by_torch(qkv[:, 0], qkv[:, 1], positions)):
        torch.testing.assert_close(kernel, plain, atol=1e-5, rtol=1e-5)


def test_rejects_mismatched_tables():
    rotary, positions, qkv, _ = setup([4], 1, 32, torch.float32)
    with pytest.raises(ValueError, match="cos_table"):
        fused_rope(qkv[:, 0], qkv[:, 1], rotary.cos_table[:, :16], rotary.sin_table[:, :16], positions)


def test_rejects_strided_or_float_position_ids():
    rotary, positions, qkv, _ = setup([4, 3], 1, 32, torch.float32)
    strided = torch.stack([positions, positions], dim=1)[:, 0]  # right values, stride 2
    assert torch.equal(strided, positions) and not strided.is_contiguous()
    with pytest.raises(ValueError, match="position_ids: expected a contiguous"):
        fused_rope(qkv[:, 0], qkv[:, 1], rotary.cos_table, rotary.sin_table, strided)
    with pytest.raises(ValueError, match="position_ids: expected an integer"):
        fused_rope(qkv[:, 0], qkv[:, 1], rotary.cos_table, rotary.sin_table, positions.float())
    fused_rope(qkv[:, 0], qkv[:, 1], rotary.cos_table, rotary.sin_table, strided.contiguous())  # accepted
