"""How well a trained model fits pair data, source by source: does it rank each query's positive first?

    python bench/pair_fit.py runs/small/trm_ft/final runs/small/data/corpus/pairs/train.jsonl
    python bench/pair_fit.py runs/small/reranker/final PAIRS [--groups 4 --group-size 20] [--out JSON]

For every source of the pairs file, `--groups` groups of `--group-size` records (a fixed seeded sample) are
drawn; inside a group, each query ranks the group's positives (a TRM: dense and sparse scores; a reranker: its
cross-encoder score over all query x positive pairs). Texts the pairs link to the query's positive (its
translations: data_prep.pairs.linked_texts) are not counted as competitors. Reported per source: top-1
accuracy and the positive's mean rank (1 = first), beside random (1 / size, (size + 1) / 2).

A model that cannot put its own training positives first has not learnt its task; judging it on held-out text
first only hides that. Prints a table and writes the JSON (--out).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from live_report import LiveReport  # noqa: E402

from data_prep.pairs import PairRecord, equivalence_key, linked_texts, read_pairs  # noqa: E402
from encoder.artifacts import load_final  # noqa: E402
from encoder.heads import sparse_scores  # noqa: E402
from encoder.inference import encode, score_pairs  # noqa: E402


def sample_groups(records: list[PairRecord], groups: int, size: int, seed: int) -> dict[str, list[list[int]]]:
    """source -> `groups` disjoint groups of `size` record indices (fewer when the source is small), each group
    with distinct positives."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_source[r.source].append(i)
    out = {}
    for source, members in sorted(by_source.items()):
        rng = random.Random(f"{seed}-{source}")
        rng.shuffle(members)
        seen, distinct = set(), []
        for i in members:
            if records[i].positive not in seen:
                seen.add(records[i].positive)
                distinct.append(i)
        chunks = [distinct[k:k + size] for k in range(0, min(len(distinct), groups * size), size)]
        out[source] = [c for c in chunks if len(c) >= 2]
    return out


def ranks(scores: torch.Tensor, competing: torch.Tensor) -> torch.Tensor:
    """Rank (1 = first) of each row's diagonal entry among the columns `competing` marks (the diagonal always
    competes); ties count against the positive."""
    target = scores.diagonal()[:, None]
    beaten = (scores >= target) & competing
    beaten.fill_diagonal_(False)
    return beaten.sum(dim=1) + 1


def score_group(model, tokenizer, kind: str, queries: list[str], positives: list[str]) -> dict[str, torch.Tensor]:
    if kind == "reranker":
        pairs = [(q, d) for q in queries for d in positives]
        return {"reranker": score_pairs(model, tokenizer, pairs).view(len(queries), len(positives))}
    q = encode(model, tokenizer, queries, sparse=True, sparse_format="ids")
    d = encode(model, tokenizer, positives, sparse=True, sparse_format="ids")
    return {"dense": q.dense @ d.dense.T, "sparse": sparse_scores(q.sparse, d.sparse)}


def fit(model_dir: Path, pairs: Path, groups: int, size: int, seed: int) -> dict:
    model, tokenizer, info = load_final(model_dir)
    records = read_pairs(pairs)
    linked = linked_texts(records)
    rows = []
    with torch.inference_mode():
        for source, chosen in sample_groups(records, groups, size, seed).items():
            found: dict[str, list[torch.Tensor]] = defaultdict(list)
            for group in chosen:
                recs = [records[i] for i in group]
                keys = [equivalence_key(r.positive, linked) for r in recs]
                competing = torch.tensor([[a != b for b in keys] for a in keys])
                for name, scores in score_group(model, tokenizer, info["kind"], [r.query for r in recs],
                                                [r.positive for r in recs]).items():
                    found[name].append(ranks(scores.float(), competing))
            row = {"source": source, "queries": sum(len(g) for g in chosen),
                   "random_top1": sum(1 / len(g) for g in chosen) / len(chosen),
                   "random_rank": sum((len(g) + 1) / 2 for g in chosen) / len(chosen)}
            for name, parts in found.items():
                r = torch.cat(parts).float()
                row[f"{name}_top1"] = float((r == 1).float().mean())
                row[f"{name}_rank"] = float(r.mean())
            rows.append(row)
    return {"model": str(model_dir), "kind": info["kind"], "pairs": str(pairs), "group_size": size, "rows": rows}


def format_fit(result: dict) -> str:
    outputs = ["reranker"] if result["kind"] == "reranker" else ["dense", "sparse"]
    head = ["source", "queries", "random top-1", "random rank"] + [f"{o} {m}" for o in outputs
                                                                   for m in ("top-1", "rank")]
    lines = [f"## {result['model']} on {result['pairs']} (groups of {result['group_size']})", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in result["rows"]:
        cells = [row["source"], str(row["queries"]), f"{row['random_top1']:.3f}", f"{row['random_rank']:.1f}"]
        cells += [f"{row[f'{o}_top1']:.3f} | {row[f'{o}_rank']:.1f}" for o in outputs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/pair_fit.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a TRM or reranker final/ directory")
    parser.add_argument("pairs", type=Path, help="a data_prep.pairs jsonl (e.g. the pairs it was trained on)")
    parser.add_argument("--groups", type=int, default=4, help="groups per source (default 4)")
    parser.add_argument("--group-size", type=int, default=20, help="records per group (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/pair_fit.json"), help="JSON written at the end")
    args = parser.parse_args(argv)
    if args.groups < 1 or args.group_size < 2:
        parser.error("--groups must be >= 1 and --group-size >= 2")
    report = LiveReport(args.out, {"bench": "pair_fit"}, sections=("fits",))
    result = fit(args.model, args.pairs, args.groups, args.group_size, args.seed)
    print(format_fit(result))
    report.add("fits", result)
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
