r"""Retrieval evaluation on a BEIR-layout set: dense, sparse, hybrid, dense-then-rerank, and a BM25 baseline.

    python -m encoder.evaluate --beir runs/data/embedded/tiny-seed0/beir --trm runs/tiny_trm_ft/final \
        --reranker runs/tiny_reranker/final --untrained-baseline --out runs/eval

Metrics: nDCG@10, recall@100, MRR@10 (encoder.metrics), over all judged queries and per language (the
query's `lang`) and per script group. BM25 is `bm25s` over the model's tokenizer pieces; the `random` row is
the exact expectation of a uniformly random ranking (the floor every figure is read against).

Hybrid: each side's scores are z-normalised per query (over the corpus) and mixed as (1-γ)·z_dense + γ·z_sparse,
so neither side can dominate by scale alone; γ in [0, 1] is chosen on the dev split when there is one (γ = 0 is
dense alone, 1 sparse alone), else taken from --gamma and reported as not tuned.

Reranking: the cross-encoder re-orders the hybrid top-k, alone and fused with the first stage's order as
(1-β)·first-stage rank + β·reranker rank. β is chosen on the dev split and kept only when its dev gain over β 0
beats one paired standard error over the dev queries (`search_beta`), so a reranker whose dev gain is noise is
not used; the verdict calls a reranker better only when its nDCG@10 beats the first stage's by RERANK_MARGIN.

Sparse statistics: a head trained with an idf prior (and BM25's length normalisation) scores with the idf and
mean document length of its training documents; --sparse-statistics collection re-estimates both on the corpus
searched, as BM25 computes its own from the index (on the demo's held-out sets of 60-95 documents the training
values scored a little better: docs/small_preset.md).

Collapse diagnostics per model: the mean pairwise cosine of the document embeddings (near 1: every document
looks alike) and the mean over queries of the rank correlation between a document's dense score and its
length (near ±1: the score measures length, not relevance); either past its threshold adds a warning.

Writes results.json, results.md and matryoshka.png (nDCG@10 by dense width).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data_prep.beir import BeirData, read_beir
from data_prep.embedded import dominant_script
from data_prep.files import write_json
from data_prep.tokenizer import backend_tokenizer, load_tokenizer

from .artifacts import load_final
from .heads import Reranker, TextRepresentationModel, sparse_scores
from .inference import Encoded, collection_statistics, encode, score_pairs
from .metrics import mean_metrics, per_query, random_metrics

GAMMA_GRID = tuple(i / 10 for i in range(11))  # sparse share of the z-normalised hybrid
COLLAPSED_COSINE = 0.9  # mean pairwise document cosine at or above this: the embeddings have collapsed
LENGTH_BIAS_RHO = 0.5  # |rank correlation of score with length| at or above this: the score tracks length
SPARSE_STATISTICS = ("model", "collection")  # where the sparse head's idf prior and mean length come from
Run = dict[str, list[str]]


@dataclass
class EncodedSet:
    query_ids: list[str]
    doc_ids: list[str]
    queries: Encoded
    docs: Encoded


def doc_text(doc: dict[str, str]) -> str:
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]


def encode_set(model: TextRepresentationModel, tokenizer, data: BeirData, query_ids: Sequence[str],
               max_length: int | None = None, docs: Encoded | None = None,
               sparse_statistics: str = "model") -> EncodedSet:
    """The queries `query_ids` and the whole corpus (or `docs`, the corpus already encoded by an earlier call,
    with the same statistics). `sparse_statistics`: "model" scores the sparse side with the idf prior and mean
    length the head learnt with (its training documents'), "collection" with those of this corpus
    (`inference.collection_statistics`, as BM25 does)."""
    doc_ids = list(data.corpus)
    texts = [doc_text(data.corpus[d]) for d in doc_ids]
    with sparse_statistics_scope(model, tokenizer, texts, sparse_statistics):
        queries = encode(model, tokenizer, [data.queries[q]["text"] for q in query_ids], sparse=True,
                         sparse_format="ids", max_length=max_length)
        if docs is None:
            docs = encode(model, tokenizer, texts, sparse=True, sparse_format="ids", max_length=max_length)
    return EncodedSet(list(query_ids), doc_ids, queries, docs)


def sparse_statistics_scope(model: TextRepresentationModel, tokenizer, texts: list[str], sparse_statistics: str):
    """A context in which the sparse head holds the statistics `sparse_statistics` names for the corpus `texts`."""
    if sparse_statistics not in SPARSE_STATISTICS:
        raise ValueError(f"sparse_statistics: expected one of {SPARSE_STATISTICS}, got {sparse_statistics!r}")
    return collection_statistics(model, tokenizer, texts) if sparse_statistics == "collection" else nullcontext()


# ---- scoring and ranking ---------------------------------------------------------------------------------
def score_matrix(encoded: EncodedSet, dense_weight: float = 1.0, sparse_weight: float = 0.0,
                 dim: int | None = None) -> Tensor:
    """`[Nq, Nd]` = dense_weight · cos (at Matryoshka width `dim`) + sparse_weight · lexical score."""
    scores = torch.zeros(len(encoded.query_ids), len(encoded.doc_ids))
    if dense_weight:
        q, d = encoded.queries.dense, encoded.docs.dense
        if dim is not None:
            q, d = torch.nn.functional.normalize(q[:, :dim], dim=-1), torch.nn.functional.normalize(d[:, :dim], dim=-1)
        scores += dense_weight * (q @ d.T)
    if sparse_weight:
        scores += sparse_weight * sparse_scores(encoded.queries.sparse, encoded.docs.sparse)
    return scores


def zscore_rows(scores: Tensor) -> Tensor:
    """Each row (query) shifted to mean 0 and scaled to standard deviation 1 (a constant row becomes 0)."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    return centred / scores.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-12)


def hybrid_matrix(encoded: EncodedSet, gamma: float, dim: int | None = None) -> Tensor:
    """`[Nq, Nd]` = (1-γ)·z(dense) + γ·z(sparse), z normalising each query's scores over the corpus."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: the sparse share of the hybrid must be in [0, 1], got {gamma}")
    return ((1.0 - gamma) * zscore_rows(score_matrix(encoded, dim=dim))
            + gamma * zscore_rows(score_matrix(encoded, 0.0, 1.0)))


def rank(scores: Tensor, query_ids: Sequence[str], doc_ids: Sequence[str], depth: int = 100) -> Run:
    k = min(depth, scores.shape[1])
    top = torch.topk(scores, k, dim=1).indices.tolist()
    return {q: [doc_ids[i] for i in row] for q, row in zip(query_ids, top)}


def rank_correlation(scores: Tensor, values: Tensor) -> Tensor:
    """Spearman's ρ between each row of `scores` `[Nq, Nd]` and `values` `[Nd]` (ties broken by order)."""
    def ranks(x: Tensor) -> Tensor:
        r = torch.empty_like(x)
        r.scatter_(-1, x.argsort(dim=-1), torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x).contiguous())
        return zscore_rows(r.reshape(-1, x.shape[-1]))

    return (ranks(scores.double()) * ranks(values.double().unsqueeze(0))).mean(dim=1)


def collapse_diagnostics(encoded: EncodedSet, doc_lengths: Sequence[int]) -> dict[str, Any]:
    """Mean pairwise cosine of the document embeddings, mean rank correlation of dense score with document
    length over queries, and a warning for each past its threshold."""
    docs = encoded.docs.dense.double()
    n = docs.shape[0]
    mean_cos = float(((docs.sum(0) @ docs.sum(0)) - (docs * docs).sum()) / max(n * (n - 1), 1))
    rho = rank_correlation(score_matrix(encoded), torch.tensor(doc_lengths, dtype=torch.float64))
    rho_mean = float(rho.mean()) if n > 1 else 0.0
    warnings = []
    if n > 1 and mean_cos >= COLLAPSED_COSINE:
        warnings.append(f"dense embeddings look collapsed: mean cosine between documents {mean_cos:.3f} "
                        f"(>= {COLLAPSED_COSINE})")
    if abs(rho_mean) >= LENGTH_BIAS_RHO:
        warnings.append(f"dense score tracks document length: mean rank correlation {rho_mean:+.3f} "
                        f"(|rho| >= {LENGTH_BIAS_RHO})")
    return {"mean_doc_cosine": round(mean_cos, 4), "score_length_rho": round(rho_mean, 4), "warnings": warnings}


def bm25_run(data: BeirData, tokenizer, query_ids: Sequence[str], depth: int = 100) -> Run:
    """BM25 (bm25s, Lucene variant) over the model tokenizer's pieces, so every script is split alike."""
    import bm25s

    doc_ids = list(data.corpus)

    def pieces(texts: list[str]) -> list[list[str]]:
        backend = backend_tokenizer(tokenizer)
        return [enc.tokens for enc in backend.encode_batch(texts, add_special_tokens=False)]

    retriever = bm25s.BM25()
    retriever.index(pieces([doc_text(data.corpus[d]) for d in doc_ids]), show_progress=False)
    query_pieces = pieces([data.queries[q]["text"] for q in query_ids])
    results = retriever.retrieve(query_pieces, k=min(depth, len(doc_ids)), show_progress=False)
    return {q: [doc_ids[i] for i in row] for q, row in zip(query_ids, results.documents.tolist())}


def rerank_scores(reranker: Reranker, tokenizer, data: BeirData, first_stage: Run, top_k: int,
                  max_length: int | None = None) -> dict[str, list[float]]:
    """Cross-encoder logits of each query's first `top_k` documents, in first-stage order."""
    pairs, owners = [], []
    for q, docs in first_stage.items():
        for d in docs[:top_k]:
            pairs.append((data.queries[q]["text"], doc_text(data.corpus[d])))
            owners.append(q)
    scores: dict[str, list[float]] = {q: [] for q in first_stage}
    for q, score in zip(owners, score_pairs(reranker, tokenizer, pairs, max_length=max_length).tolist()):
        scores[q].append(score)
    return scores


def fused_run(first_stage: Run, scores: dict[str, list[float]], beta: float = 1.0) -> Run:
    """Each query's scored head re-ordered by (1-β)·first-stage rank + β·reranker rank (β = 1: the reranker
    alone, 0: the first stage), ties to the first stage's order; the rest keep their order."""
    out = {}
    for q, docs in first_stage.items():
        head = scores[q]
        by_score = sorted(range(len(head)), key=lambda i: (-head[i], i))
        reranker_rank = {i: r for r, i in enumerate(by_score)}
        order = sorted(range(len(head)), key=lambda i: ((1 - beta) * i + beta * reranker_rank[i], i))
        out[q] = [docs[i] for i in order] + docs[len(head):]
    return out


def rerank_run(reranker: Reranker, tokenizer, data: BeirData, first_stage: Run, top_k: int,
               max_length: int | None = None) -> Run:
    """Re-order each query's first `top_k` documents by the cross-encoder; the rest keep their order."""
    return fused_run(first_stage, rerank_scores(reranker, tokenizer, data, first_stage, top_k, max_length))


BETA_GRID = tuple(i / 10 for i in range(11))  # the reranker's share of the fused rank


@dataclass(frozen=True)
class BetaChoice:
    """The fused reranker's β chosen on dev: `best` maximises mean dev nDCG@10 (`curve`), and is kept as `beta`
    only when its gain over β 0 (the first stage alone) exceeds the gain's paired standard error over the dev
    queries; otherwise `beta` is 0. A gain of 0.01 on 30 queries whose per-query differences swing by ±0.3 is
    noise, and a β chosen on noise sends a reranker that hurts to the test split."""

    beta: float
    best: float
    curve: dict[float, float]
    gain: float  # mean dev nDCG@10 of `best` minus that of β 0
    stderr: float  # paired standard error of `gain` (inf with fewer than two judged queries)
    queries: int

    def as_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "best_on_dev": self.best, "gain": round(self.gain, 4),
                "gain_stderr": round(self.stderr, 4) if math.isfinite(self.stderr) else None,
                "queries": self.queries, "ndcg@10_by_beta": self.curve}


def paired_gain(base: dict[str, float], other: dict[str, float]) -> tuple[float, float]:
    """Mean of other[q] - base[q] over the queries of `base`, and its standard error (inf below two queries)."""
    diffs = [other[q] - base[q] for q in base]
    if not diffs:
        return 0.0, math.inf
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, math.inf
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(variance / len(diffs))


def search_beta(first_stage: Run, scores: dict[str, list[float]], qrels: dict,
                grid: Sequence[float] = BETA_GRID) -> BetaChoice:
    """β maximising mean nDCG@10 of the fused ranking on `qrels` (the dev queries), ties to the smallest β, and
    kept only when its gain over the first stage beats one paired standard error (see `BetaChoice`)."""
    judged = {q: qrels[q] for q in first_stage if q in qrels}
    base = per_query(first_stage, judged)["ndcg@10"]  # β 0: the first stage's own order
    by_beta = {beta: per_query(fused_run(first_stage, scores, beta), judged)["ndcg@10"] for beta in grid}
    curve = {beta: sum(v.values()) / len(v) if v else float("nan") for beta, v in by_beta.items()}
    best = max(curve, key=lambda b: (round(curve[b], 9), -b))
    gain, stderr = paired_gain(base, by_beta[best])
    beta = best if gain > stderr else 0.0
    return BetaChoice(beta, best, curve, gain, stderr, len(base))


def rerank_sample(query_ids: Sequence[str], size: int, seed: int = 0) -> list[str]:
    """Every query (`size` 0 or at least their number), else a fixed random sample of `size`, in id order."""
    if size <= 0 or size >= len(query_ids):
        return list(query_ids)
    return sorted(random.Random(seed).sample(sorted(query_ids), size))


FIRST_STAGE = "hybrid"  # the candidates the reranker re-orders: the best single first stage by design
RERANK_MARGIN = 0.005  # nDCG@10 a reranker must add over its first stage to be called better


def reranker_verdict(first_stage: float, reranked: float, top_k: int, queries: int | None = None,
                     subject: str = "the reranker") -> dict[str, Any]:
    """First-stage vs reranked nDCG@10 (over the same queries), and a sentence that calls the reranker (named
    `subject`) better only when it is."""
    sample = f"; {queries} sampled queries" if queries else ""
    delta = reranked - first_stage
    if delta > RERANK_MARGIN:
        word = "improves"
    elif delta < -RERANK_MARGIN:
        word = "HURTS"
    else:
        word = "does not change"
    text = (f"{subject} {word} its first stage: {FIRST_STAGE} top-{top_k} nDCG@10 {first_stage:.3f} -> "
            f"{reranked:.3f} ({delta:+.3f}{sample})")
    return {"first_stage": FIRST_STAGE, "first_stage_ndcg@10": round(first_stage, 4),
            "reranked_ndcg@10": round(reranked, 4), "improves": word == "improves", "text": text}


# ---- breakdowns -------------------------------------------------------------------------------------------
def query_groups(data: BeirData, query_ids: Sequence[str]) -> dict[str, list[str]]:
    """"all", "lang:<code>" per query language, and "script:<name>" per dominant script of a language."""
    by_lang: dict[str, list[str]] = {}
    for q in query_ids:
        by_lang.setdefault(data.queries[q].get("lang", "und"), []).append(q)
    groups = {"all": list(query_ids)}
    scripts: dict[str, list[str]] = {}
    for lang in sorted(by_lang):
        groups[f"lang:{lang}"] = by_lang[lang]
        script = dominant_script(" ".join(data.queries[q]["text"] for q in by_lang[lang]))
        scripts.setdefault(f"script:{script.lower()}", []).extend(by_lang[lang])
    return {**groups, **dict(sorted(scripts.items()))}


def grouped_metrics(run: Run, qrels: dict, groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    return {name: mean_metrics(run, qrels, ids) for name, ids in groups.items()}


def search_gamma(encoded: EncodedSet, qrels: dict, grid: Sequence[float] = GAMMA_GRID) -> tuple[float, dict]:
    """γ maximising mean nDCG@10 of the hybrid on `encoded` (the dev queries); ties go to the γ nearest 0.5
    (the even mix), so a flat curve does not drop a side."""
    curve = {}
    for gamma in grid:
        run = rank(hybrid_matrix(encoded, gamma), encoded.query_ids, encoded.doc_ids)
        curve[gamma] = mean_metrics(run, qrels)["ndcg@10"]
    best = max(curve, key=lambda g: (round(curve[g], 9), -abs(g - 0.5)))  # rounding: float noise is no tie-breaker
    return best, curve


# ---- the whole evaluation ------------------------------------------------------------------------------
def corpus_key(model: TextRepresentationModel, doc_ids: Sequence[str], texts: Sequence[str],
               max_length: int | None, sparse_statistics: str) -> tuple:
    """What a corpus's encoding depends on: the model, the length cap, the statistics and every (id, text)."""
    digest = hashlib.sha256()
    for doc_id, text in zip(doc_ids, texts):
        digest.update(json.dumps([doc_id, text], ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return id(model), max_length, sparse_statistics, digest.hexdigest()


def evaluate_trm(model: TextRepresentationModel, tokenizer, data: BeirData, split: str = "test",
                 dev_split: str = "dev", gamma: float = 0.5, max_length: int | None = None,
                 dims: Sequence[int] = (), sparse_statistics: str = "model",
                 doc_cache: dict | None = None) -> dict[str, Any]:
    """Dense / sparse / hybrid runs and metrics of one TRM on `split`; γ tuned on `dev_split` if present.

    `doc_cache` (a dict the caller keeps) holds corpus encodings across calls: sets that search the same corpus
    (the cross-lingual sets of one target language, and its monolingual set) encode it once."""
    qrels = data.qrels[split]
    query_ids = sorted(qrels)
    tuned_on, dev_runs, dev = None, {}, None
    texts = [doc_text(doc) for doc in data.corpus.values()]
    key = corpus_key(model, list(data.corpus), texts, max_length, sparse_statistics) if doc_cache is not None else None
    docs = doc_cache.get(key) if doc_cache is not None else None
    # one fit of the statistics for both splits: inside the scope the head holds the ones asked for
    with sparse_statistics_scope(model, tokenizer, texts, sparse_statistics):
        encoded = encode_set(model, tokenizer, data, query_ids, max_length, docs=docs)
        if dev_split in data.qrels and dev_split != split:
            dev = encode_set(model, tokenizer, data, sorted(data.qrels[dev_split]), max_length, docs=encoded.docs)
    if doc_cache is not None:
        doc_cache[key] = encoded.docs
    if dev is not None:
        gamma, curve = search_gamma(dev, data.qrels[dev_split])
        tuned_on = {"split": dev_split, "ndcg@10_by_gamma": curve}
        dev_runs["hybrid"] = rank(hybrid_matrix(dev, gamma), dev.query_ids, dev.doc_ids)  # what a reranker tunes on
    runs = {"dense": rank(score_matrix(encoded), query_ids, encoded.doc_ids),
            "sparse": rank(score_matrix(encoded, 0.0, 1.0), query_ids, encoded.doc_ids),
            "hybrid": rank(hybrid_matrix(encoded, gamma), query_ids, encoded.doc_ids)}
    groups = query_groups(data, query_ids)
    matryoshka = {d: mean_metrics(rank(score_matrix(encoded, dim=d), query_ids, encoded.doc_ids), qrels)["ndcg@10"]
                  for d in dims}
    diagnostics = collapse_diagnostics(encoded, [len(doc_text(data.corpus[d])) for d in encoded.doc_ids])
    return {"runs": runs, "metrics": {name: grouped_metrics(run, qrels, groups) for name, run in runs.items()},
            "gamma": gamma, "gamma_tuning": tuned_on, "matryoshka_ndcg@10": matryoshka, "diagnostics": diagnostics,
            "dev_runs": dev_runs}


def plot_matryoshka(curves: dict[str, dict[int, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        dims = sorted(curve)
        ax.plot(dims, [curve[d] for d in dims], marker="o", label=label)
    ax.set_xlabel("dense dimensions (Matryoshka prefix)")
    ax.set_ylabel("nDCG@10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown_table(results: dict[str, dict[str, dict[str, float]]], metric: str = "ndcg@10") -> str:
    """Rows = systems, columns = query groups, cells = `metric` ("-" where a system has no query of a group: a
    reranked row over a sample of the queries)."""
    groups = list(next(iter(results.values())))
    lines = [f"| {metric} | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for system, by_group in results.items():
        lines.append(f"| {system} | " + " | ".join(f"{by_group[g][metric]:.3f}" if g in by_group else "-"
                                                     for g in groups) + " |")
    counts = next(iter(results.values()))
    lines.append("| queries | " + " | ".join(str(int(counts[g]["queries"])) for g in groups) + " |")
    return "\n".join(lines)


def run_evaluation(data: BeirData, tokenizer, trm: TextRepresentationModel | None = None,
                   reranker: Reranker | None = None, untrained: TextRepresentationModel | None = None,
                   split: str = "test", rerank_top_k: int = 100, gamma: float = 0.5, max_length: int | None = None,
                   dims: Sequence[int] = (), bm25: bool = True, out_dir: Path | None = None,
                   progress: Callable[[str], None] = print, rerank_queries: int = 0,
                   rerank_max_length: int | None = None, sparse_statistics: str = "model",
                   doc_cache: dict | None = None) -> dict[str, Any]:
    """Every system on one split; writes results.json / results.md / matryoshka.png when `out_dir` is given.

    `rerank_queries` > 0 reranks a fixed random sample of that many test queries (a cross-encoder costs top-k
    forward passes per query); the reranked row and the verdict's first-stage figure are then both over that
    sample, so they compare like with like. `rerank_max_length` caps each query-document pair of the reranker
    (default: `max_length`). `doc_cache`: see `evaluate_trm`."""
    qrels = data.qrels[split]
    query_ids = sorted(qrels)
    groups = query_groups(data, query_ids)
    table: dict[str, dict[str, dict[str, float]]] = {}
    report: dict[str, Any] = {"split": split, "queries": len(query_ids), "corpus": len(data.corpus),
                              "sparse_statistics": sparse_statistics}
    curves = {}
    for label, model in (("untrained", untrained), ("", trm)):
        if model is None:
            continue
        progress(f"encoding with the {label or 'trained'} TRM")
        result = evaluate_trm(model, tokenizer, data, split, gamma=gamma, max_length=max_length, dims=dims,
                              sparse_statistics=sparse_statistics, doc_cache=doc_cache)
        prefix = f"{label} " if label else ""
        for name, metrics in result["metrics"].items():
            table[f"{prefix}{name}"] = metrics
        report[f"{prefix}gamma".strip()] = result["gamma"]
        report[f"{prefix}gamma_tuning".strip()] = result["gamma_tuning"]
        report.setdefault("diagnostics", {})[label or "trained"] = result["diagnostics"]
        for warning in result["diagnostics"]["warnings"]:
            progress(f"warning ({label or 'trained'} TRM): {warning}")
        if dims:
            curves[label or "trained"] = result["matryoshka_ndcg@10"]
        if model is trm and reranker is not None:
            report.update(evaluate_reranker(reranker, tokenizer, data, result, split, rerank_top_k,
                                            rerank_max_length or max_length, rerank_queries, groups, table,
                                            progress))
    if bm25:
        table["bm25"] = grouped_metrics(bm25_run(data, tokenizer, query_ids), qrels, groups)
    table["random"] = {name: random_metrics(qrels, len(data.corpus), ids) for name, ids in groups.items()}
    report["results"] = table
    report["matryoshka_ndcg@10"] = {k: {str(d): v for d, v in c.items()} for k, c in curves.items()}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        md = "\n\n".join(f"### {m}\n\n{markdown_table(table, m)}" for m in ("ndcg@10", "recall@100", "mrr@10"))
        md += "\n\n" + diagnostics_markdown(report)
        (out_dir / "results.md").write_text(md + "\n", encoding="utf-8")
        if curves:
            plot_matryoshka(curves, out_dir / "matryoshka.png")
        # last and atomic: a results.json on disk means the whole evaluation finished (the pipeline's evaluate
        # stage reuses such a set after an interruption)
        write_json(out_dir / "results.json", report)
    return report


def evaluate_reranker(reranker: Reranker, tokenizer, data: BeirData, result: dict[str, Any], split: str,
                      top_k: int, max_length: int | None, sample_size: int, groups: dict[str, list[str]],
                      table: dict[str, dict[str, dict[str, float]]],
                      progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The reranker over the first stage's top-k of (a sample of) the test queries, alone and fused with the
    first stage's order (β tuned on the same-size sample of the dev queries, when there is a dev split); adds
    both rows to `table` and returns the verdicts. The verdict judges the fused ranking (what the evaluation
    would deploy: a β of 0 means the reranker is not used); `reranker_alone_verdict` judges the reranker's
    own order."""
    qrels = data.qrels[split]
    query_ids = sorted(qrels)
    sample = rerank_sample(query_ids, sample_size)
    progress(f"reranking the {FIRST_STAGE} top-{top_k} of {len(sample)} queries")
    first_stage = {q: result["runs"][FIRST_STAGE][q] for q in sample}
    scores = rerank_scores(reranker, tokenizer, data, first_stage, top_k, max_length)
    sample_groups = {name: kept for name, ids in groups.items() if (kept := [q for q in ids if q in first_stage])}
    first = mean_metrics(first_stage, qrels, sample)["ndcg@10"]
    sampled = len(sample) if len(sample) < len(query_ids) else None
    alone = f"{FIRST_STAGE} + rerank@{top_k}"
    table[alone] = grouped_metrics(fused_run(first_stage, scores), qrels, sample_groups)
    out: dict[str, Any] = {"reranker_alone_verdict": {**reranker_verdict(first, table[alone]["all"]["ndcg@10"],
                                                                         top_k, sampled), "queries": len(sample)}}
    dev_first = result.get("dev_runs", {}).get(FIRST_STAGE)
    beta, tuning = 1.0, None
    if dev_first:
        dev_qrels = data.qrels["dev"]
        dev_sample = rerank_sample(sorted(dev_first), sample_size)
        dev_first = {q: dev_first[q] for q in dev_sample}
        progress(f"tuning the fusion on {len(dev_sample)} dev queries")
        choice = search_beta(dev_first, rerank_scores(reranker, tokenizer, data, dev_first, top_k, max_length),
                             dev_qrels)
        beta, tuning = choice.beta, {"split": "dev", **choice.as_dict()}
        fused = f"{FIRST_STAGE} + rerank@{top_k} fused"
        table[fused] = grouped_metrics(fused_run(first_stage, scores, beta), qrels, sample_groups)
        verdict = reranker_verdict(first, table[fused]["all"]["ndcg@10"], top_k, sampled,
                                   subject=f"the reranker (fused, β {beta:g} tuned on dev)")
    else:
        verdict = dict(out["reranker_alone_verdict"])
    out.update(reranker_verdict={**verdict, "queries": len(sample), "beta": beta}, rerank_beta=beta,
               rerank_beta_tuning=tuning)
    progress(out["reranker_alone_verdict"]["text"] + " (alone)")
    progress(out["reranker_verdict"]["text"])
    return out


def beta_tuning_clause(tuning: dict[str, Any]) -> str:
    """` (dev: best β 0.4 gains +0.012 ± 0.020 over 30 queries)` (older reports lack the figures: empty)."""
    if "gain" not in tuning:
        return ""
    stderr = "∞" if tuning.get("gain_stderr") is None else f"{tuning['gain_stderr']:.3f}"
    return (f" (dev: best β {tuning['best_on_dev']:g} gains {tuning['gain']:+.3f} ± {stderr} over "
            f"{tuning['queries']} queries)")


def diagnostics_markdown(report: dict[str, Any]) -> str:
    """The collapse diagnostics, hybrid γ and reranker verdict of one evaluation, as markdown."""
    lines = ["### diagnostics", "", "| model | mean document cosine | rank corr. score~length | warnings |",
             "|---|---:|---:|---|"]
    for model, diag in report.get("diagnostics", {}).items():
        lines.append(f"| {model} | {diag['mean_doc_cosine']:.3f} | {diag['score_length_rho']:+.3f} | "
                     f"{'; '.join(diag['warnings']) or 'none'} |")
    tuned = report.get("gamma_tuning")
    lines += ["", f"Hybrid γ (sparse share) = {report.get('gamma')}"
              + (f", tuned on the {tuned['split']} split." if tuned else " (not tuned: no dev split).")]
    if "reranker_alone_verdict" in report:
        lines += ["", report["reranker_alone_verdict"]["text"] + " (its own order)."]
    if "reranker_verdict" in report and (tuning := report.get("rerank_beta_tuning")):
        lines += ["", report["reranker_verdict"]["text"] + ": the rank fusion (1-β)·first-stage rank + β·reranker "
                  "rank, β chosen on the dev split (ties to the smaller β) and kept only when its dev gain beats "
                  "one paired standard error" + beta_tuning_clause(tuning) + "."]
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beir", required=True, help="BEIR directory (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--trm", help="a TRM final/ directory (encoder.train_contrastive)")
    parser.add_argument("--reranker", help="a reranker final/ directory (encoder.train_reranker)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model's own copy)")
    parser.add_argument("--split", default="test", help="qrels split to report (default test)")
    parser.add_argument("--gamma", type=float, default=0.5,
                        help="hybrid sparse share in [0, 1] when there is no dev split to tune it on")
    parser.add_argument("--rerank-top-k", type=int, default=100, help="hybrid candidates the reranker re-orders")
    parser.add_argument("--max-length", type=int, default=None, help="token budget per text / pair")
    parser.add_argument("--untrained-baseline", action="store_true",
                        help="also score a randomly initialised TRM of the same shape (seed 0)")
    parser.add_argument("--no-bm25", action="store_true", help="skip the BM25 baseline")
    parser.add_argument("--sparse-statistics", choices=SPARSE_STATISTICS, default="model",
                        help="the sparse head's idf prior and mean length: the training documents' values (model, "
                             "default) or re-estimated on the corpus searched, as BM25 does (collection)")
    parser.add_argument("--out", default="runs/eval", help="output directory (results.json, results.md, png)")
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:

    args = build_parser().parse_args(argv)
    if not args.trm and not args.reranker:
        print("error: give --trm and/or --reranker", file=sys.stderr)
        return 2
    try:
        data = read_beir(args.beir, splits=(args.split, "dev"), required=(args.split,))
        trm = reranker = untrained = tokenizer = None
        dims: list[int] = []
        if args.trm:
            trm, tokenizer, info = load_final(args.trm)
            trm.to(args.device)
            dims = info.get("matryoshka_dims", [])
            if args.untrained_baseline:
                torch.manual_seed(0)
                untrained = TextRepresentationModel(trm.config, tuple(info["special_token_ids"])).to(args.device)
        if args.reranker:
            reranker, rr_tokenizer, _ = load_final(args.reranker)
            reranker.to(args.device)
            tokenizer = tokenizer or rr_tokenizer
        if args.tokenizer:
            tokenizer = load_tokenizer(args.tokenizer)
        if trm is None:
            print("error: --reranker needs a first stage: give --trm too", file=sys.stderr)
            return 2
        report = run_evaluation(data, tokenizer, trm, reranker, untrained, args.split, args.rerank_top_k, args.gamma,
                                args.max_length, dims, not args.no_bm25, Path(args.out),
                                sparse_statistics=args.sparse_statistics)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_table(report["results"]))
    print(f"wrote {Path(args.out) / 'results.json'}, results.md" + (", matryoshka.png" if dims else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
