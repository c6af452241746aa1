"""Ranking metrics on cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from encoder.metrics import METRICS, mean_metrics, mrr_at_k, ndcg_at_k, random_metrics, recall_at_k


def test_ndcg_hand_cases():
    assert ndcg_at_k(["a", "b"], {"a": 1}) == 1.0
    assert ndcg_at_k(["b", "a"], {"a": 1}) == pytest.approx(1 / math.log2(3))
    # two relevant (graded 2 and 1) at ranks 2 and 3: DCG = 2/log2(3) + 1/log2(4); IDCG = 2/1 + 1/log2(3)
    expected = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], {"a": 2, "b": 1}) == pytest.approx(expected)
    # relevant document outside the cut-off
    assert ndcg_at_k([str(i) for i in range(20)], {"15": 1}, k=10) == 0.0
    # negative judgements are not gains
    assert ndcg_at_k(["n", "a"], {"a": 1, "n": -1}) == pytest.approx(1 / math.log2(3))


def test_recall_and_mrr_hand_cases():
    ranked = ["d1", "d2", "d3", "d4"]
    assert recall_at_k(ranked, {"d2": 1, "d9": 1}, k=100) == 0.5
    assert recall_at_k(ranked, {"d4": 1}, k=3) == 0.0
    assert mrr_at_k(ranked, {"d3": 1, "d4": 1}) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, {"d9": 1}) == 0.0


def test_mean_over_judged_queries_only():
    run = {"q1": ["a", "b"], "q2": ["b", "a"]}
    qrels = {"q1": {"a": 1}, "q2": {"a": 1}, "q3": {"a": 0}}  # q3 has no positive: skipped
    means = mean_metrics(run, qrels)
    assert means["queries"] == 2
    assert means["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert means["mrr@10"] == pytest.approx(0.75)
    assert mean_metrics(run, qrels, ["q2"])["mrr@10"] == 0.5
    # a query the run never answered scores 0, it is not dropped
    assert mean_metrics({}, {"q1": {"a": 1}})["ndcg@10"] == 0.0


def test_random_metrics_equal_the_mean_over_every_permutation():
    # 6 documents, graded judgements: the exact expectation is the mean over all 720 orderings
    import itertools

    docs = [f"d{i}" for i in range(6)]
    qrels = {"q1": {"d0": 2, "d3": 1, "d5": 0}, "q2": {"d4": 1}, "q3": {"d1": 0}}
    orderings = list(itertools.permutations(docs))
    brute = {}
    for q in ("q1", "q2"):
        rows = [{name: fn(list(order), qrels[q], k) for name, (fn, k) in METRICS.items()} for order in orderings]
        brute[q] = {name: sum(r[name] for r in rows) / len(rows) for name in METRICS}
    expected = random_metrics(qrels, len(docs))
    assert expected["queries"] == 2  # q3 has no positive judgement: skipped, as mean_metrics does
    for name in METRICS:
        assert expected[name] == pytest.approx((brute["q1"][name] + brute["q2"][name]) / 2, rel=1e-12)
    # one relevant document among 1000: about 1/1000 of the ideal at every rank, far below any model
    assert random_metrics({"q": {"d": 1}}, 1000)["ndcg@10"] == pytest.approx(
        sum(1 / math.log2(r + 2) for r in range(10)) / 1000)
