"""Ranking metrics over BEIR-style qrels, written out so they can be checked by hand.

A run is `{query id: [doc id, ...]}` best first; qrels are `{query id: {doc id: graded relevance}}`.
nDCG uses linear gains (rel / log2(rank + 1)), as trec_eval and BEIR do; judgements <= 0 count as
non-relevant. Queries without a positive judgement are skipped (BEIR convention), never scored 0.
`random_metrics` gives the exact expectation of each metric under a uniformly random ranking (the floor a
model must clear by a margin before its figure means anything).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    dcg = sum(max(relevance.get(doc, 0), 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 100) -> float:
    relevant = {doc for doc, rel in relevance.items() if rel > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    for rank, doc in enumerate(ranked[:k]):
        if relevance.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


METRICS = {"ndcg@10": (ndcg_at_k, 10), "recall@100": (recall_at_k, 100), "mrr@10": (mrr_at_k, 10)}


def per_query(run: Run, qrels: Qrels) -> dict[str, dict[str, float]]:
    """metric -> {query id -> value} for every judged query with at least one positive (missing run = [])."""
    judged = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    return {name: {q: fn(run.get(q, []), qrels[q], k) for q in judged} for name, (fn, k) in METRICS.items()}


def mean_metrics(run: Run, qrels: Qrels, query_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Mean of every metric over `query_ids` (default: every judged query), plus the query count."""
    values = per_query(run, qrels)
    out: dict[str, float] = {}
    for name, by_query in values.items():
        ids = [q for q in (query_ids if query_ids is not None else by_query) if q in by_query]
        out[name] = sum(by_query[q] for q in ids) / len(ids) if ids else float("nan")
    out["queries"] = len([q for q in (query_ids if query_ids is not None else values["ndcg@10"])
                          if q in values["ndcg@10"]])
    return out


def _random_query(relevance: Mapping[str, int], n_docs: int) -> dict[str, float]:
    """Expected metrics of one query when `n_docs` documents are shuffled uniformly."""
    gains = [r for r in relevance.values() if r > 0]
    n = max(n_docs, len(gains))
    discount = lambda rank: 1 / math.log2(rank + 2)  # noqa: E731
    ideal = sorted(gains, reverse=True)[:10]
    # each rank holds a uniformly drawn document, so its expected gain is the mean gain over the corpus
    dcg = sum(gains) / n * sum(discount(r) for r in range(min(10, n)))
    idcg = sum(g * discount(r) for r, g in enumerate(ideal))
    # MRR: P(first relevant document at rank r) = P(ranks 1..r-1 all non-relevant) * R / (n - r + 1)
    mrr, none_yet = 0.0, 1.0
    for r in range(min(10, n)):
        hit = len(gains) / (n - r)
        mrr += none_yet * hit / (r + 1)
        none_yet *= 1 - hit
    return {"ndcg@10": dcg / idcg, "recall@100": min(100, n) / n, "mrr@10": mrr}


def random_metrics(qrels: Qrels, n_docs: int, query_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Exact expected metrics (same keys as `mean_metrics`) of a uniformly random ranking of `n_docs`."""
    judged = [q for q in (query_ids if query_ids is not None else qrels)
              if q in qrels and any(r > 0 for r in qrels[q].values())]
    rows = [_random_query(qrels[q], n_docs) for q in judged]
    out = {name: sum(row[name] for row in rows) / len(rows) if rows else float("nan") for name in METRICS}
    out["queries"] = len(judged)
    return out
