"""What native 8192-token context buys: the needle sets of `data_prep.longdoc` scored three ways by one model.

    python -m encoder.longdoc_eval --sets runs/longdoc --trm runs/trm/final --reranker runs/rr/final --out runs/ld
    python -m encoder.longdoc_eval --memory configs/base.yaml     # peak RSS encoding one 8192-token document

Modes (same weights): `whole` = one vector per document (up to the model's 8192 tokens); `trunc512` = the
document cut to 512 tokens, as a 512-token model sees it; `chunk512` = the document split into 512-token
chunks, the document scoring the max over its chunks. Each for dense, sparse and hybrid (dense + γ·sparse),
plus BM25 (bm25s) and, with a reranker, the whole-document dense top-k re-ordered at 8192 and at 512 tokens.
Metric: nDCG@10 (one relevant document per query), by length bucket, by needle position, and for needles
whose first token lies past token 512 (invisible to `trunc512`). Encoding goes through encoder.evaluate /
encoder.inference; nothing here re-implements scoring or metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data_prep.beir import BeirData
from data_prep.longdoc import LongDocSet, read_longdoc_set
from data_prep.tokenizer import backend_tokenizer

from .artifacts import load_final
from .batch import UnpaddedBatch
from .config import ModelConfig, load_config
from .evaluate import (
    SPARSE_STATISTICS,
    bm25_run,
    doc_text,
    encode_set,
    hybrid_matrix,
    rank,
    rerank_run,
    score_matrix,
)
from .heads import Reranker, TextRepresentationModel
from .metrics import per_query

SHORT_CONTEXT = 512  # what a 512-token encoder sees
OUTPUTS = ("dense", "sparse", "hybrid")


@dataclass
class LongDocEvalConfig:
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])  # target document lengths
    queries_per_needle: int = 1  # queries (languages) per needle document
    # same: the query is the needle's own text (classic needle in a haystack: can the model see it at all?);
    # translation: the needle's unit in another language (cross-lingual, much harder for a toy model)
    query_mode: str = "same"
    seed: int = 0
    gamma: float = -1.0  # hybrid sparse share in [0, 1]; < 0 = the main evaluation's tuned γ (else 0.5)
    rerank_top_k: int = 3  # whole-document dense candidates re-ordered by the reranker (0 = no reranking)
    heatmap_systems: list[str] = field(default_factory=lambda: ["whole dense", "trunc512 dense", "chunk512 dense",
                                                                "whole hybrid", "bm25"])


QUERY_WORDS = {"same": "the query is the needle's own text",
               "translation": "the query is the needle in another language"}


# ---- one set ------------------------------------------------------------------------------------------------
def chunk_corpus(data: BeirData, tokenizer, chunk_tokens: int = SHORT_CONTEXT) -> tuple[BeirData, list[str]]:
    """Each document cut at token boundaries into texts of at most `chunk_tokens` tokens (specials included);
    returns the chunk set (same queries) and the document id of every chunk."""
    backend = backend_tokenizer(tokenizer)
    room = chunk_tokens - backend.num_special_tokens_to_add(False)
    corpus, owners = {}, []
    for doc_id, doc in data.corpus.items():
        text = doc_text(doc)
        offsets = backend.encode(text, add_special_tokens=False).offsets
        for k, start in enumerate(range(0, len(offsets), room)):
            window = offsets[start:start + room]
            corpus[f"{doc_id}#{k}"] = {"title": "", "text": text[window[0][0]:window[-1][1]]}
            owners.append(doc_id)
    return BeirData(corpus=corpus, queries=data.queries, qrels=data.qrels), owners


def max_over_chunks(scores: Tensor, owners: Sequence[str], doc_ids: Sequence[str]) -> Tensor:
    """`[Nq, Nchunks]` -> `[Nq, Nd]`: a document scores its best chunk."""
    column = {d: i for i, d in enumerate(doc_ids)}
    index = torch.tensor([column[o] for o in owners]).expand(scores.shape[0], -1)
    out = scores.new_full((scores.shape[0], len(doc_ids)), float("-inf"))
    return out.scatter_reduce(1, index, scores, reduce="amax")


def trm_runs(model: TextRepresentationModel, tokenizer, data: BeirData, gamma: float,
             sparse_statistics: str = "model") -> dict[str, dict]:
    """`<mode> <output>` -> run, for the three modes and dense / sparse / hybrid. `sparse_statistics` as in
    `evaluate.encode_set`; with "collection" the chunk mode's statistics are the chunks' (the index it searches)."""
    query_ids = sorted(data.qrels["test"])
    doc_ids = list(data.corpus)
    runs = {}
    for mode in ("whole", "trunc512", "chunk512"):
        if mode == "chunk512":
            chunks, owners = chunk_corpus(data, tokenizer)
            encoded = encode_set(model, tokenizer, chunks, query_ids, max_length=SHORT_CONTEXT,
                                 sparse_statistics=sparse_statistics)
        else:
            encoded = encode_set(model, tokenizer, data, query_ids,
                                 max_length=SHORT_CONTEXT if mode == "trunc512" else None,
                                 sparse_statistics=sparse_statistics)
        for output in OUTPUTS:
            scores = (hybrid_matrix(encoded, gamma) if output == "hybrid"
                      else score_matrix(encoded, float(output == "dense"), float(output == "sparse")))
            if mode == "chunk512":
                scores = max_over_chunks(scores, owners, doc_ids)
            runs[f"{mode} {output}"] = rank(scores, query_ids, doc_ids)
    return runs


def evaluate_set(data: LongDocSet, tokenizer, trm: TextRepresentationModel | None, reranker: Reranker | None,
                 gamma: float, rerank_top_k: int, sparse_statistics: str = "model") -> list[dict[str, Any]]:
    """One row per (query, system): the needle's length bucket, position, offset and the query's metrics."""
    beir, qrels = data.beir, data.beir.qrels["test"]
    runs = trm_runs(trm, tokenizer, beir, gamma, sparse_statistics) if trm is not None else {}
    runs["bm25"] = bm25_run(beir, tokenizer, sorted(qrels))
    if reranker is not None and rerank_top_k and "whole dense" in runs:
        for label, max_length in (("8192", None), ("512", SHORT_CONTEXT)):
            runs[f"whole dense + rerank@{rerank_top_k} ({label})"] = rerank_run(
                reranker, tokenizer, beir, runs["whole dense"], rerank_top_k, max_length)
    rows = []
    for system, run in runs.items():
        values = per_query(run, qrels)
        for qid, needle in data.needles.items():
            rows.append({"system": system, "query": qid, "length": needle.length_bucket, "position": needle.position,
                         "token_offset": needle.token_offset, "past512": needle.token_offset >= SHORT_CONTEXT,
                         "ndcg@10": values["ndcg@10"][qid], "mrr@10": values["mrr@10"][qid]})
    return rows


# ---- tables and the heat map ------------------------------------------------------------------------------------
def mean_by(rows: list[dict], key: str, metric: str = "ndcg@10") -> dict[str, dict[Any, float]]:
    """system -> group value -> mean metric."""
    sums: dict[str, dict[Any, list[float]]] = {}
    for row in rows:
        sums.setdefault(row["system"], {}).setdefault(row[key], []).append(row[metric])
    return {s: {g: sum(v) / len(v) for g, v in sorted(groups.items())} for s, groups in sums.items()}


def summary_table(rows: list[dict], metric: str = "ndcg@10") -> str:
    """Rows = systems; columns = lengths, positions, needles past token 512, all."""
    lengths, positions = mean_by(rows, "length", metric), mean_by(rows, "position", metric)
    past = mean_by([{**r, "all": "past"} for r in rows if r["past512"]], "all", metric)
    every = mean_by([{**r, "all": "all"} for r in rows], "all", metric)
    first = next(iter(lengths))
    heads = [f"{n // 1024}k" for n in lengths[first]] + [f"@{p:g}" for p in positions[first]] + ["past 512", "all"]
    lines = [f"| {metric} | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for system in lengths:
        cells = list(lengths[system].values()) + list(positions[system].values())
        cells += [past.get(system, {}).get("past", float("nan")), every[system]["all"]]
        lines.append(f"| {system} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    counts = [sum(1 for r in rows if r["system"] == first and r["length"] == n) for n in lengths[first]]
    counts += [sum(1 for r in rows if r["system"] == first and r["position"] == p) for p in positions[first]]
    counts += [sum(1 for r in rows if r["system"] == first and r["past512"]), sum(r["system"] == first for r in rows)]
    lines.append("| queries | " + " | ".join(str(c) for c in counts) + " |")
    return "\n".join(lines)


def cell_table(rows: list[dict], metric: str = "ndcg@10") -> str:
    """Rows = (length, position) cells; columns = systems (BM25 beside the model's modes)."""
    cells = mean_by([{**r, "cell": (r["length"], r["position"])} for r in rows], "cell", metric)
    systems = list(cells)
    lines = ["| length | position | " + " | ".join(systems) + " |", "|---|---|" + "---|" * len(systems)]
    for length, position in cells[systems[0]]:
        values = " | ".join(f"{cells[s][(length, position)]:.3f}" for s in systems)
        lines.append(f"| {length} | {position:g} | {values} |")
    return "\n".join(lines)


def plot_heatmaps(rows: list[dict], systems: Sequence[str], path: Path, metric: str = "ndcg@10") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = mean_by([{**r, "cell": (r["length"], r["position"])} for r in rows], "cell", metric)
    systems = [s for s in systems if s in cells]
    lengths = sorted({k[0] for k in cells[systems[0]]})
    positions = sorted({k[1] for k in cells[systems[0]]})
    fig, axes = plt.subplots(1, len(systems), figsize=(2.6 * len(systems) + 0.8, 2.8), squeeze=False)
    for ax, system in zip(axes[0], systems):
        grid = [[cells[system].get((n, p), float("nan")) for p in positions] for n in lengths]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(positions)), [f"{p:g}" for p in positions])
        ax.set_yticks(range(len(lengths)), [f"{n // 1024}k" for n in lengths])
        ax.set_xlabel("needle position")
        ax.set_title(system, fontsize=9)
    axes[0][0].set_ylabel("document tokens")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=metric)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def run_longdoc_eval(sets: Sequence[LongDocSet], tokenizer, trm: TextRepresentationModel | None,
                     reranker: Reranker | None = None, gamma: float = 0.5, rerank_top_k: int = 3,
                     out_dir: Path | None = None, heatmap_systems: Sequence[str] = (),
                     progress=print, query_mode: str = "translation",
                     sparse_statistics: str = "model") -> dict[str, Any]:
    """Every set, every system; with `out_dir` writes longdoc.json, longdoc.md and longdoc_heatmap.png.
    Returns {"rows", "summary_md", "cells_md", and the paths written}."""
    rows = []
    for data in sets:
        progress(f"long documents: {data.length} tokens, {len(data.beir.corpus)} documents, "
                 f"{len(data.needles)} queries")
        rows += evaluate_set(data, tokenizer, trm, reranker, gamma, rerank_top_k, sparse_statistics)
    result: dict[str, Any] = {"rows": rows, "gamma": gamma, "summary_md": summary_table(rows),
                              "cells_md": cell_table(rows)}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        result["json"] = out_dir / "longdoc.json"
        result["json"].write_text(json.dumps({"gamma": gamma, "rows": rows}, indent=1), encoding="utf-8")
        result["table_md"] = out_dir / "longdoc.md"
        result["table_md"].write_text(
            "nDCG@10 on needle-in-a-haystack documents (one relevant document per query; "
            f"{QUERY_WORDS.get(query_mode, query_mode)}). `whole` = one vector per document, `trunc512` = the same "
            f"model on the first 512 tokens, `chunk512` = max over 512-token chunks; hybrid γ = {gamma:g}.\n\n"
            + result["summary_md"] + "\n\nBy length and needle position:\n\n" + result["cells_md"] + "\n",
            encoding="utf-8")
        result["heatmap_png"] = plot_heatmaps(rows, heatmap_systems or LongDocEvalConfig().heatmap_systems,
                                              out_dir / "longdoc_heatmap.png")
    return result


# ---- peak memory of one long document ----------------------------------------------------------------------------
def _rss_kib(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {name}")


def encode_peak_memory(preset: str | Path, length: int = 8192, seed: int = 0) -> dict[str, float]:
    """Peak RSS above the loaded model (MiB) for a TRM forward (dense + sparse) over one `length`-token
    document of random ids, in inference mode on CPU. Linux only (VmHWM reset through clear_refs)."""
    config = load_config(ModelConfig, preset, section="model")
    torch.manual_seed(seed)
    model = TextRepresentationModel(config).eval()
    ids = torch.randint(4, config.vocab_size - 1, (length,))
    ids[0] = 0
    batch = UnpaddedBatch.from_packed(ids, [length])
    with torch.inference_mode():
        model(UnpaddedBatch.from_packed(ids[:64], [64]))  # allocator and kernel warm-up outside the peak
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        out = model(batch)
        peak = _rss_kib("VmHWM")
    return {"length": length, "peak_above_model_mib": (peak - before) / 1024, "model_rss_mib": before / 1024,
            "sparse_terms": int(out.sparse.weights.numel()), "hidden_size": config.hidden_size,
            "num_layers": config.num_layers, "vocab_size": config.vocab_size,
            "attention_backend": model.encoder.resolved_attention_backend("cpu"),
            "t_by_t_fp32_mib_per_head": length * length * 4 / 2**20,
            "t_by_vocab_fp32_mib": length * config.vocab_size * 4 / 2**20}


# ---- command line -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m encoder.longdoc_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", help="directory of len<L>/ needle sets (python -m data_prep.longdoc eval)")
    parser.add_argument("--trm", help="a TRM final/ directory")
    parser.add_argument("--reranker", help="a reranker final/ directory")
    parser.add_argument("--gamma", type=float, default=0.5, help="hybrid sparse share in [0, 1] (z-normalised)")
    parser.add_argument("--rerank-top-k", type=int, default=3)
    parser.add_argument("--query-mode", choices=sorted(QUERY_WORDS), default="translation",
                        help="how the sets were built (python -m data_prep.longdoc eval --query-mode); for the report")
    parser.add_argument("--sparse-statistics", choices=SPARSE_STATISTICS, default="model",
                        help="the sparse head's idf prior and mean length: the training documents' (model, default) "
                             "or each searched corpus's own (collection; the chunk mode's are the chunks')")
    parser.add_argument("--out", default="runs/longdoc_eval")
    parser.add_argument("--memory", metavar="PRESET", help="only measure peak memory for one document")
    parser.add_argument("--length", type=int, default=8192, help="--memory: document length")
    args = parser.parse_args(argv)
    if args.memory:
        print(json.dumps(encode_peak_memory(args.memory, args.length), indent=1))
        return 0
    if not args.sets or not args.trm:
        print("error: give --sets and --trm (or --memory PRESET)", file=sys.stderr)
        return 2
    trm, tokenizer, _ = load_final(args.trm)
    reranker = load_final(args.reranker)[0] if args.reranker else None
    sets = [read_longdoc_set(d) for d in sorted(Path(args.sets).glob("len*"), key=lambda p: int(p.name[3:]))]
    result = run_longdoc_eval(sets, tokenizer, trm, reranker, args.gamma, args.rerank_top_k, Path(args.out),
                              query_mode=args.query_mode, sparse_statistics=args.sparse_statistics)
    print(result["summary_md"])
    print(f"wrote {result['table_md']}, {result['heatmap_png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
