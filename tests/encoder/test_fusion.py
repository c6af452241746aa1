"""Hybrid fusion, collapse diagnostics and the reranker verdict on hand-made scores."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from encoder.evaluate import (
    EncodedSet,
    collapse_diagnostics,
    fused_run,
    hybrid_matrix,
    markdown_table,
    paired_gain,
    rank_correlation,
    rerank_sample,
    reranker_verdict,
    score_matrix,
    search_beta,
    search_gamma,
    zscore_rows,
)
from encoder.heads import SparseEmbedding
from encoder.inference import Encoded


def sparse(rows: list[dict[int, float]]) -> SparseEmbedding:
    seq, ids, weights = [], [], []
    for i, row in enumerate(rows):
        for token, weight in row.items():
            seq.append(i), ids.append(token), weights.append(weight)
    return SparseEmbedding(torch.tensor(seq, dtype=torch.long), torch.tensor(ids, dtype=torch.long),
                           torch.tensor(weights), len(rows))


def encoded_set(q_dense: torch.Tensor, d_dense: torch.Tensor, q_sparse: list[dict], d_sparse: list[dict]) -> EncodedSet:
    q = Encoded(F.normalize(q_dense.float(), dim=-1), sparse(q_sparse), None, None, 0)
    d = Encoded(F.normalize(d_dense.float(), dim=-1), sparse(d_sparse), None, None, 0)
    return EncodedSet([f"q{i}" for i in range(len(q_sparse))], [f"d{i}" for i in range(len(d_sparse))], q, d)


@pytest.fixture
def dense_right_sparse_noisy() -> EncodedSet:
    """Query i's relevant document is d_i. Dense points at it; sparse (large weights) points at d_{i+1}."""
    n = 4
    eye = torch.eye(n)
    q_sparse = [{100 + i: 50.0} for i in range(n)]
    d_sparse = [{100 + (i - 1) % n: 50.0} for i in range(n)]  # d_i holds query (i-1)'s term
    return encoded_set(eye + 0.1, eye + 0.1, q_sparse, d_sparse)


def test_zscore_rows_centres_scales_and_leaves_constant_rows_at_zero():
    z = zscore_rows(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert torch.allclose(z[0].mean(), torch.tensor(0.0))
    assert torch.allclose(z[0].std(unbiased=False), torch.tensor(1.0))
    assert torch.equal(z[1], torch.zeros(3))


def test_hybrid_ends_are_each_side_alone(dense_right_sparse_noisy):
    enc = dense_right_sparse_noisy
    assert torch.allclose(hybrid_matrix(enc, 0.0), zscore_rows(score_matrix(enc)))
    assert torch.allclose(hybrid_matrix(enc, 1.0), zscore_rows(score_matrix(enc, 0.0, 1.0)))
    with pytest.raises(ValueError, match="gamma"):
        hybrid_matrix(enc, 1.5)


def test_a_large_noisy_side_does_not_dominate_an_even_mix(dense_right_sparse_noisy):
    enc = dense_right_sparse_noisy
    raw = score_matrix(enc, 1.0, 1.0)  # the old, unnormalised sum: sparse scale (2500) swamps dense (<= 1)
    assert raw.argmax(dim=1).tolist() == [1, 2, 3, 0]
    # normalised, the mix is invariant to either side's scale: multiply sparse by 1000, nothing moves
    scaled = EncodedSet(enc.query_ids, enc.doc_ids, enc.queries,
                        Encoded(enc.docs.dense, SparseEmbedding(enc.docs.sparse.sequence_index,
                                                                enc.docs.sparse.token_ids,
                                                                enc.docs.sparse.weights * 1000,
                                                                enc.docs.sparse.batch_size), None, None, 0))
    assert torch.allclose(hybrid_matrix(enc, 0.3), hybrid_matrix(scaled, 0.3), atol=1e-5)


def test_gamma_search_keeps_away_from_the_noisy_side(dense_right_sparse_noisy):
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(4)}
    gamma, curve = search_gamma(dense_right_sparse_noisy, qrels)
    assert curve[gamma] == pytest.approx(max(curve.values())) == pytest.approx(1.0)
    assert gamma <= 0.5 and curve[0.6] < 0.8 and curve[1.0] < 0.8  # sparse-led mixes rank the wrong document first


def test_gamma_search_breaks_ties_towards_an_even_mix(dense_right_sparse_noisy):
    enc = dense_right_sparse_noisy
    agreeing = EncodedSet(enc.query_ids, enc.doc_ids, enc.queries,
                          Encoded(enc.docs.dense, sparse([{100 + i: 50.0} for i in range(4)]), None, None, 0))
    gamma, curve = search_gamma(agreeing, {f"q{i}": {f"d{i}": 1} for i in range(4)})
    assert all(v == pytest.approx(1.0) for v in curve.values()) and gamma == 0.5


def test_collapse_diagnostics_flag_identical_embeddings_and_length_scores():
    n = 6
    same = torch.ones(n, 8)
    enc = encoded_set(torch.ones(2, 8), same, [{1: 1.0}] * 2, [{1: 1.0}] * n)
    diag = collapse_diagnostics(enc, list(range(n)))
    assert diag["mean_doc_cosine"] == pytest.approx(1.0)
    assert any("collapsed" in w for w in diag["warnings"])
    # orthogonal documents, score proportional to length
    docs = torch.eye(n)
    queries = torch.arange(1, n + 1, dtype=torch.float32).unsqueeze(0).repeat(2, 1)
    enc = encoded_set(queries, docs, [{1: 1.0}] * 2, [{1: 1.0}] * n)
    diag = collapse_diagnostics(enc, [10 * (i + 1) for i in range(n)])
    assert diag["mean_doc_cosine"] == pytest.approx(0.0, abs=1e-6)
    assert diag["score_length_rho"] == pytest.approx(1.0)
    assert [w for w in diag["warnings"] if "length" in w] and not [w for w in diag["warnings"] if "collapsed" in w]
    # unrelated to length: no warning
    diag = collapse_diagnostics(enc, [30, 10, 60, 20, 50, 40])
    assert abs(diag["score_length_rho"]) < 0.5 and diag["warnings"] == []


def test_rank_correlation_matches_spearman_by_hand():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [1.0, 3.0, 2.0, 4.0]])
    rho = rank_correlation(scores, torch.tensor([10.0, 20.0, 30.0, 40.0]))
    assert rho.tolist() == pytest.approx([1.0, -1.0, 0.8])  # 1 - 6·Σd²/(n(n²-1)) = 1 - 6·2/60


def test_reranker_verdict_never_calls_a_worse_reranker_better():
    worse = reranker_verdict(0.60, 0.40, 20)
    assert not worse["improves"] and "HURTS" in worse["text"] and "0.600 -> 0.400" in worse["text"]
    same = reranker_verdict(0.60, 0.602, 20)
    assert not same["improves"] and "does not change" in same["text"]
    better = reranker_verdict(0.60, 0.70, 20)
    assert better["improves"] and better["text"].startswith("the reranker improves")


def test_rerank_sample_is_fixed_sorted_and_complete_when_asked_for_everything():
    ids = [f"q{i:03d}" for i in range(50)]
    sample = rerank_sample(list(reversed(ids)), 7)
    assert len(sample) == 7 and sample == sorted(sample) and set(sample) <= set(ids)
    assert sample == rerank_sample(ids, 7)  # the order the ids come in does not change the sample
    assert rerank_sample(ids, 0) == ids and rerank_sample(ids, 50) == ids and rerank_sample(ids, 80) == ids


def test_fused_rank_ends_are_the_first_stage_and_the_reranker_and_the_tail_keeps_its_order():
    first = {"q": ["a", "b", "c", "d", "e"]}
    scores = {"q": [0.1, 0.2, 0.9, 0.5]}  # the reranker saw the top 4: c > d > b > a
    assert fused_run(first, scores, 0.0) == first
    assert fused_run(first, scores, 1.0) == {"q": ["c", "d", "b", "a", "e"]}
    # β 0.5: a 0+3=3, b 1+2=3, c 2+0=2, d 3+1=4 -> c, then a and b tied (first-stage order), then d
    assert fused_run(first, scores, 0.5) == {"q": ["c", "a", "b", "d", "e"]}


def test_beta_search_trusts_a_reranker_that_helps_and_ignores_one_that_does_not():
    first = {"q1": ["x", "rel1", "y"], "q2": ["u", "v", "rel2"]}
    qrels = {"q1": {"rel1": 1}, "q2": {"rel2": 1}}
    good = {"q1": [0.0, 1.0, 0.5], "q2": [0.0, 0.1, 2.0]}
    choice = search_beta(first, good, qrels)
    assert choice.curve[1.0] == pytest.approx(1.0)
    assert choice.beta == choice.best == min(b for b in choice.curve if choice.curve[b] == choice.curve[1.0])
    # both queries gain (1 - 1/log2 3 and 1 - 1/log2 4): mean 0.435, paired standard error 0.065
    assert choice.gain == pytest.approx((2 - 1 / math.log2(3) - 0.5) / 2)
    assert choice.stderr == pytest.approx(abs(0.5 - (1 - 1 / math.log2(3))) / 2) and choice.queries == 2
    flat = {"q1": [0.0, 0.0, 0.0], "q2": [0.0, 0.0, 0.0]}  # no information: every β ties, the first stage wins
    assert search_beta(first, flat, qrels).beta == 0.0
    bad = {"q1": [1.0, 0.0, 0.5], "q2": [2.0, 1.0, 0.0]}  # pushes the relevant documents down
    choice = search_beta(first, bad, qrels)
    assert choice.beta == 0.0 and choice.curve[0.0] > choice.curve[1.0]


def test_paired_gain_by_hand():
    assert paired_gain({"a": 0.5, "b": 0.2}, {"a": 0.7, "b": 0.2}) == pytest.approx((0.1, 0.1))
    assert paired_gain({"a": 0.5}, {"a": 0.9}) == (pytest.approx(0.4), math.inf)  # one query: no error estimate
    assert paired_gain({}, {}) == (0.0, math.inf)


def test_beta_search_keeps_the_first_stage_when_the_dev_gain_is_within_its_noise():
    # 4 dev queries: past β 0.5 the fusion lifts q1's relevant document from rank 3 to 1 (+0.5) and drops q2's
    # from rank 1 to 2 (-0.37); q3, q4 unchanged. The best β on the curve gains 0.033, but its paired standard
    # error over the four queries is 0.18: β stays 0.
    first = {"q1": ["a", "b", "rel"], "q2": ["rel", "b", "c"], "q3": ["rel", "x", "y"], "q4": ["rel", "x", "y"]}
    qrels = {q: {"rel": 1} for q in first}
    scores = {"q1": [0.0, 0.1, 1.0], "q2": [0.5, 1.0, 0.0], "q3": [1.0, 0.0, 0.0], "q4": [1.0, 0.0, 0.0]}
    choice = search_beta(first, scores, qrels)
    assert choice.best == 0.6 and choice.gain == pytest.approx((0.5 + 1 / math.log2(3) - 1) / 4)  # the curve trusts it
    assert choice.stderr == pytest.approx(0.178, abs=1e-3) and choice.beta == 0.0  # ... but the gain is noise
    # the same lift on every query is no noise: β is kept
    lifted = {q: {"rel": 1} for q in ("q1", "q5", "q6")}
    first_lifted = {q: ["a", "b", "rel"] for q in lifted}
    choice = search_beta(first_lifted, {q: [0.0, 0.1, 1.0] for q in lifted}, lifted)
    assert choice.beta == choice.best > 0 and choice.stderr == pytest.approx(0.0)


def test_markdown_table_marks_groups_a_sampled_row_does_not_cover():
    table = {"hybrid": {"all": {"ndcg@10": 0.5, "queries": 4}, "lang:ar": {"ndcg@10": 0.25, "queries": 2}},
             "hybrid + rerank@20": {"all": {"ndcg@10": 0.75, "queries": 2}}}
    lines = markdown_table(table).splitlines()
    assert lines[2] == "| hybrid | 0.500 | 0.250 |" and lines[3] == "| hybrid + rerank@20 | 0.750 | - |"
