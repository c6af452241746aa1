"""The tiny encoder gives the same outputs and gradients with the Triton kernels as with the references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kernel_helpers import DEVICE

import encoder.attention as attention_registry
from encoder.batch import UnpaddedBatch
from encoder.config import ModelConfig, load_config
from encoder.model import Encoder

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture
def triton_backend_here():
    assert attention_registry.is_available("triton", DEVICE)


def run_model(model: Encoder, batch: UnpaddedBatch, grad_out: torch.Tensor):
    model.zero_grad(set_to_none=True)
    hidden = model(batch)  # [T, H]
    hidden.backward(grad_out)
    return hidden.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_tiny_encoder_triton_matches_reference(triton_backend_here):
    config = load_config(ModelConfig, TINY, section="model")
    config.attention_backend, config.rope_impl, config.glu_impl = "reference", "torch", "torch"
    config.hidden_dropout = 0.0
    torch.manual_seed(0)
    model = Encoder(config).to(DEVICE)
    generator = torch.Generator().manual_seed(0)
    lengths = [1, 70, 7, 33]
    batch = UnpaddedBatch.from_sequences(
        [torch.randint(4, config.vocab_size, (n,), generator=generator).tolist() for n in lengths], device=DEVICE)
    grad_out = torch.randn(sum(lengths), config.hidden_size, generator=generator).to(DEVICE)

    expected, expected_grads = run_model(model, batch, grad_out)
    model.set_attention_backend("triton")
    model.rotary.impl = "triton"
    for layer in model.layers:  # all three kernels: attention, RoPE, GLU
        layer.mlp.impl = "triton"
    assert model.resolved_attention_backend(DEVICE) == "triton"
    actual, actual_grads = run_model(model, batch, grad_out)

    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert expected_grads.keys() == actual_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
    # the comparison has teeth: the gradients through attention are not all zero
    assert expected_grads["layers.0.attn.qkv_proj.weight"].abs().max() > 1e-3
