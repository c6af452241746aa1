"""What a lexical score of token weights needs to match BM25: the same token ids (a TRM's tokenizer) scored as a
binary match, with term-frequency saturation, and as BM25, each with the model's idf prior or the corpus's own
idf, beside the model's sparse head as configured.

    python bench/lexical_shapes.py runs/small/trm_ft/run/final runs/small/data/corpus/heldout/debian-handbook/mono-de
        [MORE_BEIR_DIRS ...] [--split test] [--out JSON]

Rows (nDCG@10 on the split; k1 1.2, b 0.75; a query token counts once):
  binary x prior^2     sum over shared tokens of prior(t)^2: the untrained max-pooled head (weight = prior per side)
  binary x idf         the same with the corpus's idf, ln(1 + (N - df + 0.5) / (df + 0.5))
  tf-saturated x idf   idf x tf (k1+1) / (tf + k1): term frequency without length normalisation
  BM25 x prior^2       BM25's tf and length terms with the prior
  BM25 x idf           BM25 proper over the model's tokens
  head q-side          BM25 x prior^2 with the head's learned weight on the query tokens only (max-pooled weight
                       over prior: the factor the head learnt; no tf scaling on the query, as in the head)
  head d-side          the same with the learned weight on the document tokens only
  head q-side x idf    BM25 proper (the corpus's own idf) with the head's learned weight on the query tokens
  head both x idf      the same with the learned weight on both sides
  sparse head          the TRM's own sparse scores (model.sparse_tf_k1 as the model was trained)

Why: a max-pooled lexical weight cannot see that a section names its topic ten times, nor that a long one matches
everything once. This tells apart what the head's learned weights are worth from what its shape loses, and on
which side (query or document) they help or hurt.
Prints a table and writes the JSON (--out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from live_report import LiveReport, report_rows  # noqa: E402

from data_prep.beir import read_beir  # noqa: E402
from encoder.artifacts import load_final  # noqa: E402
from encoder.evaluate import doc_text, encode_set, rank, score_matrix  # noqa: E402
from encoder.inference import tokenize_texts  # noqa: E402
from encoder.metrics import mean_metrics  # noqa: E402

K1, B = 1.2, 0.75
ROWS = ("binary x prior^2", "binary x idf", "tf-saturated x idf", "BM25 x prior^2", "BM25 x idf", "head q-side",
        "head d-side", "head q-side x idf", "head both x idf", "sparse head")


def count_matrix(sequences: list[list[int]], vocab: int, special: set[int]) -> torch.Tensor:
    """`[N, vocab]` occurrences of each non-special token id per text."""
    counts = torch.zeros(len(sequences), vocab)
    for i, ids in enumerate(sequences):
        kept = torch.tensor([t for t in ids if t not in special], dtype=torch.long)
        counts[i].index_add_(0, kept, torch.ones(len(kept)))
    return counts


def lexical_scores(queries: torch.Tensor, docs: torch.Tensor, prior: torch.Tensor,
                   learned: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """`[Nq, Nd]` scores of every shape but the model's own, from query and document count matrices; with
    `learned` (the head's learned factor per query and per document token, `[Nq, V]` and `[Nd, V]`), the two
    one-sided rows too."""
    n = len(docs)
    df = (docs > 0).sum(0).float()
    idf = torch.log1p((n - df + 0.5) / (df + 0.5))
    present = (queries > 0).float()
    lengths = docs.sum(1, keepdim=True)
    saturated = docs * (K1 + 1) / (docs + K1)
    bm25 = docs * (K1 + 1) / (docs + K1 * (1 - B + B * lengths / lengths.mean().clamp_min(1e-6)))
    scores = {"binary x prior^2": (present * prior ** 2) @ (docs > 0).float().T,
              "binary x idf": (present * idf) @ (docs > 0).float().T,
              "tf-saturated x idf": (present * idf) @ saturated.T,
              "BM25 x prior^2": (present * prior ** 2) @ bm25.T,
              "BM25 x idf": (present * idf) @ bm25.T}
    if learned is not None:
        query_factor, doc_factor = learned
        scores["head q-side"] = (present * query_factor * prior) @ (bm25 * prior).T
        scores["head d-side"] = (present * prior) @ (bm25 * doc_factor * prior).T
        scores["head q-side x idf"] = (present * query_factor * idf) @ bm25.T
        scores["head both x idf"] = (present * query_factor * idf) @ (bm25 * doc_factor).T
    return scores


def learned_factors(model, encoded, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's learned factor of each (text, token id): its max-pooled lexical weight over the token's prior,
    `[Nq, V]` and `[Nd, V]` (`encoded` from a head without tf scaling)."""
    def dense(sparse) -> torch.Tensor:
        out = torch.zeros(sparse.batch_size, vocab)
        out[sparse.sequence_index, sparse.token_ids] = sparse.weights.float()
        return out / model.head.token_prior.float().clamp_min(1e-12)

    return dense(encoded.queries.sparse), dense(encoded.docs.sparse)


def shapes(model_dir: Path, beir_dir: Path, split: str) -> dict:
    model, tokenizer, _ = load_final(model_dir)
    data = read_beir(beir_dir, splits=(split,), required=(split,))
    qrels = data.qrels[split]
    query_ids, doc_ids = sorted(qrels), list(data.corpus)
    budget = model.config.max_position_embeddings
    queries, _ = tokenize_texts(tokenizer, [data.queries[q]["text"] for q in query_ids], budget)
    docs, _ = tokenize_texts(tokenizer, [doc_text(data.corpus[d]) for d in doc_ids], budget)
    special = set(model.head.special_ids)
    vocab = model.config.vocab_size
    with torch.inference_mode():
        scores = {"sparse head": score_matrix(encode_set(model, tokenizer, data, query_ids), 0.0, 1.0)}
        tf_k1, model.head.tf_k1 = model.head.tf_k1, 0.0  # the learned weights alone, max-pooled
        try:
            learned = learned_factors(model, encode_set(model, tokenizer, data, query_ids), vocab)
        finally:
            model.head.tf_k1 = tf_k1
    scores.update(lexical_scores(count_matrix(queries, vocab, special), count_matrix(docs, vocab, special),
                                 model.head.token_prior.float(), learned))
    row = {"model": str(model_dir), "beir": str(beir_dir), "split": split, "queries": len(query_ids)}
    row.update({name: mean_metrics(rank(s, query_ids, doc_ids), qrels)["ndcg@10"] for name, s in scores.items()})
    return row


def format_rows(rows: list[dict]) -> str:
    lines = ["## lexical scores over the model's tokens (nDCG@10)", "",
             "| set | " + " | ".join(ROWS) + " |", "|---|" + "---:|" * len(ROWS)]
    for row in rows:
        lines.append(f"| {Path(row['beir']).name} | " + " | ".join(f"{row[name]:.3f}" for name in ROWS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/lexical_shapes.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a TRM final/ directory (its tokenizer, prior and sparse head)")
    parser.add_argument("beir", type=Path, nargs="+", help="BEIR-layout directories")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/lexical_shapes.json"),
                        help="JSON written after every set")
    args = parser.parse_args(argv)
    report = LiveReport(args.out, {"bench": "lexical_shapes", "k1": K1, "b": B})
    return report_rows(report, args.beir, lambda beir_dir: shapes(args.model, beir_dir, args.split), format_rows)


if __name__ == "__main__":
    sys.exit(main())
