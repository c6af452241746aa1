"""Losses on hand-made cases: InfoNCE = cross-entropy over a known matrix, Matryoshka sums, sparse term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from encoder.heads import SparseEmbedding, TRMOutput
from encoder.losses import (
    LossConfig,
    build_output_losses,
    concat_trm,
    contrastive_loss,
    global_pair_loss,
    info_nce,
    select_rows,
)


def trm(cls_hidden: torch.Tensor, sparse: SparseEmbedding | None = None) -> TRMOutput:
    if sparse is None:
        empty = torch.zeros(0, dtype=torch.long)
        sparse = SparseEmbedding(empty, empty, torch.zeros(0), cls_hidden.shape[0])
    return TRMOutput(dense=F.normalize(cls_hidden.float(), dim=-1), sparse=sparse, cls_hidden=cls_hidden)


def test_info_nce_is_cross_entropy_of_a_known_matrix():
    scores = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.2, 0.8]])
    # by hand: row 0 target 0, row 1 target 1, temperature 0.5
    row0 = -math.log(math.exp(1.8) / (math.exp(1.8) + math.exp(0.2) + math.exp(-0.4)))
    row1 = -math.log(math.exp(0.4) / (math.exp(0.6) + math.exp(0.4) + math.exp(1.6)))
    assert info_nce(scores, 0.5).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # a masked false negative disappears from the denominator, the target never does
    mask = torch.tensor([[True, False, True], [True, True, False]])
    row0_masked = -math.log(math.exp(1.8) / (math.exp(1.8) + math.exp(0.2)))
    row1_masked = -math.log(math.exp(0.4) / (math.exp(0.4) + math.exp(1.6)))
    assert info_nce(scores, 0.5, mask=mask).item() == pytest.approx((row0_masked + row1_masked) / 2, rel=1e-6)


def test_perfect_separation_gives_near_zero_loss_and_swapped_gives_large():
    good = torch.eye(4)
    assert info_nce(good, 0.01).item() < 1e-6
    assert info_nce(good.flip(1), 0.01).item() > 50


def test_matryoshka_total_is_weighted_sum_of_prefix_losses():
    torch.manual_seed(0)
    q, d = torch.randn(5, 8), torch.randn(7, 8)  # 5 queries, 5 positives + 2 hard negatives
    config = LossConfig(dense_temperature=0.1, sparse_weight=0.0, matryoshka_dims=[2, 4, 8],
                        matryoshka_weights=[0.5, 0.25, 1.0], dense_weight=2.0)
    outputs = build_output_losses(config, hidden_size=8)
    assert [o.name for o in outputs] == ["dense@2", "dense@4", "dense@8"]
    result = contrastive_loss(trm(q), trm(d), outputs)
    expected = 0.0
    for dim, weight in [(2, 0.5), (4, 0.25), (8, 1.0)]:
        scores = F.normalize(q[:, :dim], dim=-1) @ F.normalize(d[:, :dim], dim=-1).T
        expected += 2.0 * weight * F.cross_entropy(scores / 0.1, torch.arange(5))
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(result.parts) == {"dense@2", "dense@4", "dense@8"}


def test_matryoshka_step_covers_every_multiple_up_to_hidden():
    assert LossConfig(matryoshka_step=32).dims(128) == [32, 64, 96, 128]
    assert LossConfig().dims(128) == [128]
    with pytest.raises(ValueError, match="matryoshka_weights"):
        LossConfig(matryoshka_dims=[32, 64], matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="matryoshka_dims"):
        LossConfig(matryoshka_dims=[256]).dims(128)


def test_sparse_loss_uses_lexical_overlap_and_its_own_temperature():
    # query 0 shares token 7 with doc 0, query 1 shares token 9 with doc 1; doc 1 also has token 7
    q = SparseEmbedding(torch.tensor([0, 1]), torch.tensor([7, 9]), torch.tensor([1.0, 2.0]), 2)
    d = SparseEmbedding(torch.tensor([0, 1, 1]), torch.tensor([7, 9, 7]), torch.tensor([0.5, 1.5, 0.25]), 2)
    config = LossConfig(dense_weight=0.0, sparse_weight=3.0, sparse_temperature=0.2)
    outputs = build_output_losses(config, hidden_size=4)
    assert [o.name for o in outputs] == ["sparse"]
    result = contrastive_loss(trm(torch.randn(2, 4), q), trm(torch.randn(2, 4), d), outputs)
    scores = torch.tensor([[0.5, 0.25], [0.0, 3.0]])  # Σ over shared ids of w_q · w_d
    expected = 3.0 * F.cross_entropy(scores / 0.2, torch.arange(2))
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_row_mask_restricts_only_its_output_to_the_kept_queries():
    q = SparseEmbedding(torch.tensor([0, 1]), torch.tensor([7, 9]), torch.tensor([1.0, 2.0]), 2)
    d = SparseEmbedding(torch.tensor([0, 1, 1]), torch.tensor([7, 9, 7]), torch.tensor([0.5, 1.5, 0.25]), 2)
    config = LossConfig(dense_weight=1.0, sparse_weight=1.0, sparse_temperature=0.2)
    outputs = build_output_losses(config, hidden_size=4)
    torch.manual_seed(0)
    queries, docs = trm(torch.randn(2, 4), q), trm(torch.randn(2, 4), d)
    full = contrastive_loss(queries, docs, outputs)
    kept = contrastive_loss(queries, docs, outputs, row_masks={"sparse": torch.tensor([False, True])})
    scores = torch.tensor([[0.5, 0.25], [0.0, 3.0]])
    assert kept.parts["sparse"].item() == pytest.approx(F.cross_entropy(scores[1:] / 0.2, torch.tensor([1])).item())
    assert kept.parts["sparse"].item() != pytest.approx(full.parts["sparse"].item())
    assert kept.parts["dense@4"].item() == pytest.approx(full.parts["dense@4"].item())  # other outputs untouched
    none = contrastive_loss(queries, docs, outputs, row_masks={"sparse": torch.tensor([False, False])})
    assert none.parts["sparse"].item() == 0.0


def test_pair_batches_flag_queries_without_a_shared_token(tiny_tokenizer):
    from data_prep.pairs import PairRecord
    from encoder.pair_batching import PairBatches, PairDataConfig

    records = [PairRecord("Delete %(name)s", "Supprimer %(name)s"), PairRecord("Heute", "今日")]
    batches = PairBatches(records, tiny_tokenizer, PairDataConfig(batch_size=2, group_by="none"), seed=0)
    flags = dict(zip((records[i].query for i in range(2)), batches.lexical.tolist()))
    assert flags == {"Delete %(name)s": True, "Heute": False}
    batch = batches.batch(0)
    assert batch.lexical_overlap.dtype == torch.bool and len(batch.lexical_overlap) == 2


def test_linked_positives_are_masked_in_batch_and_never_drawn_as_negatives(tiny_tokenizer):
    """Two records of one translation unit (de->en, fr->ko: linked through en<->ko) must not be each other's
    in-batch negative, nor each other's random negative in the reranker's groups."""
    from data_prep.pairs import PairRecord
    from encoder.pair_batching import PairBatches, PairDataConfig
    from encoder.train_contrastive import false_negative_mask
    from encoder.train_reranker import RerankerDataConfig, RerankGroups

    records = [PairRecord("Löschen", "Delete"), PairRecord("Supprimer", "삭제"), PairRecord("Delete", "삭제"),
               PairRecord("Heute", "Today")]
    batches = PairBatches(records, tiny_tokenizer, PairDataConfig(batch_size=4, group_by="none"), seed=0)
    batch = batches.batch(0)
    mask = false_negative_mask(batch, torch.device("cpu"), gather=False)
    unit = [batches.doc_keys[batches.positive[i]].item() for i in range(4)]
    assert unit[0] == unit[1] == unit[2] != unit[3]
    keys = batch.positive_keys.tolist()
    expected = torch.tensor([[a == b for b in keys] for a in keys])
    assert torch.equal(mask, expected) and mask.sum().item() == 3 * 3 + 1

    groups = RerankGroups(records, RerankerDataConfig(batch_size=4, group_by="none", num_hard_negatives=0,
                                                      num_random_negatives=3), seed=0)
    for step in range(20):
        for group in groups.batch(step):
            (query, positive), negatives = group[0], [doc for _, doc in group[1:]]
            assert len(negatives) == 3
            if positive in ("Delete", "삭제"):
                assert set(negatives) == {"Today"}, (query, negatives)


def test_sparse_gradient_reaches_token_weights():
    weights = torch.tensor([1.0, 2.0], requires_grad=True)
    q = SparseEmbedding(torch.tensor([0, 1]), torch.tensor([7, 9]), weights, 2)
    d = SparseEmbedding(torch.tensor([0, 1]), torch.tensor([7, 7]), torch.tensor([1.0, 0.5]), 2)
    config = LossConfig(dense_weight=0.0, sparse_weight=1.0)
    outputs = build_output_losses(config, 4)
    contrastive_loss(trm(torch.randn(2, 4), q), trm(torch.randn(2, 4), d), outputs).loss.backward()
    assert weights.grad is not None and weights.grad[0] != 0


def test_hard_negatives_enter_the_denominator():
    torch.manual_seed(1)
    q, p, n = torch.randn(3, 6), torch.randn(3, 6), torch.randn(2, 6)
    outputs = build_output_losses(LossConfig(dense_temperature=0.05, sparse_weight=0.0), 6)
    with_negatives = global_pair_loss(trm(q), trm(p), trm(n), outputs)
    in_batch = global_pair_loss(trm(q), trm(p), None, outputs)
    docs = torch.cat([p, n])
    scores = F.normalize(q, dim=-1) @ F.normalize(docs, dim=-1).T
    assert with_negatives.loss.item() == pytest.approx(F.cross_entropy(scores / 0.05, torch.arange(3)).item(), rel=1e-5)
    assert with_negatives.loss.item() > in_batch.loss.item()  # more negatives, never a smaller loss


def test_concat_and_select_keep_sparse_rows_aligned():
    a = trm(torch.randn(2, 4), SparseEmbedding(torch.tensor([0, 1]), torch.tensor([5, 6]), torch.tensor([1.0, 2.0]), 2))
    b = trm(torch.randn(1, 4), SparseEmbedding(torch.tensor([0]), torch.tensor([7]), torch.tensor([3.0]), 1))
    both = concat_trm([a, b])
    assert both.sparse.to_dicts() == [{5: 1.0}, {6: 2.0}, {7: 3.0}]
    picked = select_rows(both, torch.tensor([2, 0]))
    assert picked.sparse.to_dicts() == [{7: 3.0}, {5: 1.0}]
    assert torch.equal(picked.cls_hidden, both.cls_hidden[[2, 0]])
