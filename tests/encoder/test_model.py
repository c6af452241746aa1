"""Acceptance tests of the packed encoder (issue 2: a-f)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from model_helpers import random_batch, tiny_config

from encoder import kernel_switches
from encoder.attention import available_backends, get_backend, is_available, resolve_backend_name
from encoder.batch import UnpaddedBatch, unpad
from encoder.model import Encoder
from encoder.rope import RotaryEmbedding, apply_rotary, rope_inv_freq
from kernels.reference import reference_attention

MIXED = [1, 7, 129, 300, 17, 64]


def make_encoder(seed: int = 0, **overrides) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(tiny_config(**overrides)).eval()


# (a) packing is invisible: each sequence gives the same states alone as inside a mixed batch
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_packed_batch_equals_each_sequence_alone(norm_position):
    model = make_encoder(norm_position=norm_position)
    batch = random_batch(MIXED, model.config.vocab_size, seed=1)
    with torch.no_grad():
        packed = model(batch)
        for seq_ids, states in zip(batch.split(batch.input_ids), batch.split(packed)):
            alone = model(UnpaddedBatch.from_sequences([seq_ids.tolist()]))
            assert (alone - states).abs().max().item() < 1e-5


# (b) every available backend matches the reference
@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b != "reference"])
def test_backends_match_reference_fp32(backend):
    model = make_encoder(attention_backend="reference")
    batch = random_batch(MIXED, model.config.vocab_size, seed=2)
    with torch.no_grad():
        expected = model(batch)
        model.set_attention_backend(backend)
        got = model(batch)
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_backends_attention_bf16_relative_error(backend):
    generator = torch.Generator().manual_seed(3)
    lengths = [1, 7, 129, 64]
    total, heads, dim = sum(lengths), 4, 32
    q, k, v = (torch.randn(total, heads, dim, generator=generator).to(torch.bfloat16) for _ in range(3))
    cu = UnpaddedBatch.from_packed(torch.zeros(total, dtype=torch.long), lengths).cu_seqlens
    exact = reference_attention(q.double(), k.double(), v.double(), cu, max(lengths))
    got = get_backend(backend, "cpu")(q, k, v, cu, max(lengths)).double()
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    assert ((got - exact).norm() / exact.norm()).item() < 2e-2


def test_reference_attention_is_block_diagonal():
    # changing one sequence's keys/values must not change another sequence's output
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(10, 2, 8, generator=generator) for _ in range(3))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    for backend in available_backends("cpu"):
        fn = get_backend(backend, "cpu")
        base = fn(q, k, v, cu, 6)
        k2, v2 = k.clone(), v.clone()
        k2[4:] += 1.0
        v2[4:] -= 2.0
        moved = fn(q, k2, v2, cu, 6)
        assert torch.allclose(base[:4], moved[:4], atol=1e-6), backend
        assert not torch.allclose(base[4:], moved[4:], atol=1e-3), backend


def test_unknown_or_unavailable_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="attention_backend"):
        resolve_backend_name("nonsense", "cpu")
    with pytest.raises(ValueError, match="not available on cpu"):
        resolve_backend_name("flash", "cpu")
    assert resolve_backend_name("auto", "cpu") == "sdpa"


THIS_GPU = "Test GPU (sm_90), triton 0.0"


@pytest.fixture
def gpu_check_record(tmp_path, monkeypatch):
    """A pass record in a temporary file, and a CUDA device identity that needs no GPU."""
    path = tmp_path / "gpu_check.json"
    monkeypatch.setenv(kernel_switches.RECORD_ENV, str(path))
    monkeypatch.setattr(kernel_switches, "device_key", lambda device: THIS_GPU)
    kernel_switches._VERIFIED.clear()
    yield path
    kernel_switches._VERIFIED.clear()


def test_auto_on_cuda_uses_triton_only_after_a_gpu_check_pass(gpu_check_record):
    """The choice needs no GPU: the registry, the import guards and the pass record decide."""
    pytest.importorskip("triton", reason="triton not installed: auto never picks it")
    known_good = next(b for b in ("flash", "xformers", "sdpa") if is_available(b, "cuda"))
    fake_cuda_tensor = SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    assert resolve_backend_name("auto", "cuda") == known_good
    assert not kernel_switches.use_triton_kernel("auto", fake_cuda_tensor)  # RoPE, GLU: torch
    assert resolve_backend_name("triton", "cuda") == "triton"  # named: used as named
    kernel_switches.record_gpu_check_pass("Other GPU (sm_80), triton 0.0", {"passed": ["kernel tests"]})
    assert resolve_backend_name("auto", "cuda") == known_good  # another device's pass does not count

    kernel_switches.record_gpu_check_pass(THIS_GPU, {"passed": ["kernel tests"]})
    assert resolve_backend_name("auto", "cuda") == "triton"
    assert kernel_switches.use_triton_kernel("auto", fake_cuda_tensor)
    record = json.loads(gpu_check_record.read_text())
    assert set(record["passes"]) == {"Other GPU (sm_80), triton 0.0", THIS_GPU}
    assert record["passes"][THIS_GPU]["passed"] == ["kernel tests"] and record["passes"][THIS_GPU]["recorded"]
    assert resolve_backend_name("auto", "cpu") == "sdpa"  # CPU: never the interpreter


def test_unreadable_gpu_check_record_warns_and_counts_as_no_pass(gpu_check_record):
    pytest.importorskip("triton")
    gpu_check_record.write_text("{not json")
    with pytest.warns(UserWarning, match="gpu_check.json"):
        assert not kernel_switches.triton_verified("cuda")
    assert resolve_backend_name("auto", "cuda") != "triton"


# (c) the padded user path equals the unpadded path
def test_padded_path_equals_unpadded_path():
    model = make_encoder()
    batch = random_batch([5, 12, 1, 9], model.config.vocab_size, seed=5)
    ids = torch.full((4, 12), model.config.pad_token_id)
    mask = torch.zeros(4, 12, dtype=torch.long)
    for row, seq in enumerate(batch.split(batch.input_ids)):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    with torch.no_grad():
        padded_out = model.forward_padded(ids, mask)
        packed_out = model(batch)
    unpadded_back, _ = unpad(ids, mask)
    assert torch.equal(unpadded_back.input_ids, batch.input_ids)
    assert padded_out.shape == (4, 12, model.config.hidden_size)
    assert (padded_out[mask.bool()] - packed_out).abs().max().item() < 1e-6
    assert padded_out[~mask.bool()].abs().max().item() == 0.0


# (d) RoPE
def test_rope_scores_depend_only_on_position_difference():
    rotary = RotaryEmbedding(head_dim=32, max_positions=4096, theta=10000.0)
    generator = torch.Generator().manual_seed(6)
    q = torch.randn(1, 1, 32, generator=generator, dtype=torch.float64)
    k = torch.randn(1, 1, 32, generator=generator, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cos, sin = rotary.cos_table.double(), rotary.sin_table.double()
        qm = apply_rotary(q, cos[[m]], sin[[m]])
        kn = apply_rotary(k, cos[[n]], sin[[n]])
        return float((qm * kn).sum())

    for m, n, shift in [(3, 1, 100), (0, 7, 2000), (50, 50, 3000)]:
        assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-4, abs_tol=1e-6)
    assert not math.isclose(score(3, 1), score(1, 3), rel_tol=1e-3)  # direction matters


def test_rope_ntk_matches_hand_computed_case():
    # head_dim 4, theta 1e4, factor 8: base 8e4; inv_freq_j = 80000^(-j/2) / 8^(1/2)
    #   j=0: 1/sqrt(8) = 0.353553...;  j=1: 1/(sqrt(80000)*sqrt(8)) = 1/800
    inv_freq = rope_inv_freq(4, 10000.0, ntk_factor=8.0)
    assert torch.allclose(inv_freq.double(), torch.tensor([1 / math.sqrt(8), 1 / 800], dtype=torch.float64),
                          rtol=1e-6)
    rotary = RotaryEmbedding(head_dim=4, max_positions=16, theta=10000.0, ntk_factor=8.0)
    p = 5
    expected = [math.cos(p / math.sqrt(8)), math.cos(p / 800)] * 2
    assert torch.allclose(rotary.cos_table[p].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)
    # without scaling: the plain base
    assert torch.allclose(rope_inv_freq(4, 10000.0), torch.tensor([1.0, 0.01]))


def test_set_rope_changes_outputs_and_is_restorable():
    model = make_encoder()
    batch = random_batch([40], model.config.vocab_size, seed=7)
    with torch.no_grad():
        before = model(batch)
        model.set_rope(10000.0)
        changed = model(batch)
        model.set_rope(160000.0)
        after = model(batch)
    assert (before - changed).abs().max().item() > 1e-4
    assert torch.equal(before, after)


# (e) one 8192-token sequence, forward and backward, on CPU
def test_single_8192_token_sequence_forward_backward():
    model = make_encoder()
    model.train()
    batch = random_batch([8192], model.config.vocab_size, seed=8)
    hidden = model(batch)
    assert hidden.shape == (8192, model.config.hidden_size)
    # the last token's state depends on the first token through attention (a random projection: the sum
    # of a LayerNorm output is constant, so its gradient would be zero)
    (hidden[-1] * torch.randn(model.config.hidden_size)).sum().backward()
    grad = model.embeddings.word_embeddings.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[batch.input_ids[0]].abs().sum() > 0


# (f) invalid inputs raise ValueError naming the field
def test_sequence_over_max_positions_is_rejected():
    model = make_encoder(max_position_embeddings=64)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(random_batch([65], model.config.vocab_size))


def test_empty_batch_is_rejected():
    model = make_encoder()
    with pytest.raises(ValueError, match="empty batch"):
        model.forward_padded(torch.zeros(0, 3, dtype=torch.long))


# switches: gradient checkpointing, bf16 autocast, dropout
def test_gradient_checkpointing_gives_same_gradients():
    batch = random_batch([9, 33, 2], 8192, seed=9)
    grads = []
    for checkpointing in (False, True):
        model = make_encoder(seed=11, gradient_checkpointing=checkpointing)
        model.train()
        model(batch).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_bf16_autocast_on_cpu_close_to_fp32():
    model = make_encoder()
    batch = random_batch([30, 5, 70], model.config.vocab_size, seed=10)
    with torch.no_grad():
        fp32 = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(batch)
    assert torch.isfinite(bf16).all()
    assert ((bf16.float() - fp32).norm() / fp32.norm()).item() < 2e-2


def test_bf16_autocast_backward_runs():
    model = make_encoder()
    model.train()
    batch = random_batch([30, 5], model.config.vocab_size, seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch).float().pow(2).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_dropout_is_active_only_in_training():
    model = make_encoder(hidden_dropout=0.1)
    batch = random_batch([20], model.config.vocab_size, seed=13)
    with torch.no_grad():
        a, b = model(batch), model(batch)
        model.train()
        c = model(batch)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# rows-only outputs of the last layer (MLM on masked tokens, CLS-only encoding)
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_output_rows_and_cls_states_match_full_forward(norm_position):
    model = make_encoder(norm_position=norm_position)
    batch = random_batch(MIXED, model.config.vocab_size, seed=14)
    rows = torch.tensor([0, 3, 8, 200, 500])
    with torch.no_grad():
        full = model(batch)
        assert (model(batch, output_rows=rows) - full[rows]).abs().max().item() < 1e-6
        assert (model.cls_states(batch) - full[batch.first_token_index]).abs().max().item() < 1e-5


def test_first_token_attention_matches_reference():
    from encoder.attention import first_token_attention

    generator = torch.Generator().manual_seed(15)
    lengths = [1, 7, 129, 64]
    batch = UnpaddedBatch.from_packed(torch.zeros(sum(lengths), dtype=torch.long), lengths)
    q, k, v = (torch.randn(batch.num_tokens, 3, 16, generator=generator, dtype=torch.float64) for _ in range(3))
    expected = []
    for qs, ks, vs in zip(batch.split(q), batch.split(k), batch.split(v)):  # float64 throughout
        probs = torch.softmax(torch.einsum("hd,lhd->hl", qs[0], ks) / 4.0, dim=-1)  # 1/sqrt(16)
        expected.append(torch.einsum("hl,lhd->hd", probs, vs))
    expected = torch.stack(expected)
    got = first_token_attention(q[batch.first_token_index], k, v, batch.sequence_index)
    assert (got - expected).abs().max().item() < 1e-10


def test_chunked_inference_feed_forward_matches_unchunked():
    model = make_encoder()
    batch = random_batch([50, 31], model.config.vocab_size, seed=16)
    for layer in model.layers:
        layer.mlp.inference_chunk_rows = 16  # force several chunks
    with torch.no_grad():
        chunked = model(batch)
    unchunked = model(batch).detach()  # grad mode: one pass
    assert (chunked - unchunked).abs().max().item() < 1e-6
