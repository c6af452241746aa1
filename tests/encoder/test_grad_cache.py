"""Gradient caching gives the gradients of the plain full-batch step, dropout included."""

from __future__ import annotations

import torch

from encoder.config import ModelConfig
from encoder.distributed import DistEnv
from encoder.grad_cache import plan_chunks
from encoder.heads import Reranker, TextRepresentationModel
from encoder.losses import LossConfig, build_output_losses
from encoder.pair_batching import PairBatch
from encoder.train_contrastive import TRMRunConfig, false_negative_mask, trm_loss_fn, trm_step
from encoder.train_reranker import RerankerRunConfig, reranker_step
from encoder.training import build_engine

CONFIG = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
              max_position_embeddings=128, attention_backend="sdpa")


def pair_batch(seed: int = 0) -> PairBatch:
    gen = torch.Generator().manual_seed(seed)

    def seqs(n: int) -> list[list[int]]:
        return [[0] + torch.randint(4, 40, (int(torch.randint(2, 20, (1,), generator=gen)),),
                                    generator=gen).tolist() + [2] for _ in range(n)]

    keys = torch.arange(14)
    keys[9] = keys[1]  # one negative is the same text as positive 1: masked as a false negative
    return PairBatch(queries=seqs(4), positives=seqs(4), negatives=seqs(6), positive_keys=keys[:4],
                     negative_keys=keys[4:10])


OUTPUTS = build_output_losses(LossConfig(sparse_weight=0.5, matryoshka_dims=[16, 32]), 32)


def tiny_trm(dropout: float) -> TextRepresentationModel:
    torch.manual_seed(0)
    return TextRepresentationModel(ModelConfig(**CONFIG, hidden_dropout=dropout)).double().train()


def grads_of(model: torch.nn.Module, loss: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def trm_grads(grad_cache: bool, dropout: float, budget: int) -> tuple[float, dict[str, torch.Tensor]]:
    model = tiny_trm(dropout)
    engine = build_engine("plain", model, torch.optim.SGD(model.parameters(), lr=0.0), DistEnv())
    run = TRMRunConfig()
    run.data.grad_cache, run.data.sub_batch_tokens = grad_cache, budget
    torch.manual_seed(123)  # the dropout stream
    return grads_of(model, trm_step(engine, pair_batch(), OUTPUTS, run, torch.device("cpu")).loss)


def chunked_with_grad(dropout: float, budget: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Reference: the same sub-batches forwarded once, with grad, consuming the dropout stream in the same order."""
    model, batch = tiny_trm(dropout), pair_batch()
    chunks, inverse = plan_chunks(batch.queries + batch.positives + batch.negatives, budget, torch.device("cpu"))
    loss_fn = trm_loss_fn(len(batch.queries), len(batch.negatives), inverse, OUTPUTS, True,
                          false_negative_mask(batch, torch.device("cpu"), True))
    torch.manual_seed(123)
    loss = loss_fn([model(c) for c in chunks]).loss
    loss.backward()
    return grads_of(model, loss)


def assert_same(a, b):
    assert abs(a[0] - b[0]) < 1e-5
    assert set(a[1]) == set(b[1])
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_grad_cache_equals_full_batch_without_dropout():
    full = trm_grads(grad_cache=False, dropout=0.0, budget=0)
    cached = trm_grads(grad_cache=True, dropout=0.0, budget=40)  # many small length-sorted sub-batches
    assert_same(full, cached)
    assert full[1]["head.sparse_linear.weight"].abs().sum() > 0


def test_grad_cache_replays_dropout_masks():
    cached = trm_grads(grad_cache=True, dropout=0.2, budget=40)
    assert_same(cached, chunked_with_grad(dropout=0.2, budget=40))
    no_dropout = trm_grads(grad_cache=True, dropout=0.0, budget=40)
    assert abs(cached[0] - no_dropout[0]) > 1e-6  # dropout really was active


def test_reranker_grad_cache_equals_full_batch(tiny_tokenizer):
    from data_prep.tokenizer import special_ids

    vocab = special_ids(tiny_tokenizer).padded_vocab_size
    groups = [[("query one", "the answer"), ("query one", "unrelated words here"), ("query one", "x")],
              [("second question", "a long document " * 5), ("second question", "no"), ("second question", "yes")]]

    def grads(grad_cache: bool):
        torch.manual_seed(0)
        model = Reranker(ModelConfig(**{**CONFIG, "vocab_size": vocab}, hidden_dropout=0.0)).double()
        engine = build_engine("plain", model, torch.optim.SGD(model.parameters(), lr=0.0), DistEnv())
        run = RerankerRunConfig()
        run.data.grad_cache, run.data.sub_batch_tokens, run.data.max_length = grad_cache, 24, 64
        return grads_of(model, reranker_step(engine, groups, tiny_tokenizer, run, torch.device("cpu"))[0].loss)

    assert_same(grads(False), grads(True))
