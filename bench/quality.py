"""Retrieval quality of finished pipeline runs, from their saved results (no model is loaded or re-run).

    python bench/quality.py runs/demo [runs/small ...] [--out runs/bench/quality.json]

For each work directory: nDCG@10 of every system (random, BM25, dense, sparse, hybrid, reranked) on the
in-domain eval and on each held-out-domain set (a source no training stage saw), the hybrid γ, the collapse
diagnostics, the long-document figures past token 512 (whole document vs 512-token truncation), and the
quality checks of the recipe, each marked pass / FAIL / n/a (no such set in the run):

  heldout_mono_hybrid_ge_bm25      hybrid >= BM25, mean over the held-out monolingual sets
  heldout_cross_dense_2x_bm25      dense >= 2 x BM25, mean over the held-out cross-lingual sets
  heldout_dense_above_random       dense >= random + 0.1 on the held-out domain (every set pooled)
  reranker_not_below_first_stage   reranked >= its first stage - 0.005 (held-out sets, else in-domain); the
                                   reranked ranking is the one the evaluation judges: the reranker's order
                                   fused with its first stage's (β tuned on dev; β 0 = reranker unused)
  reranker_improves_first_stage    reranked > its first stage + 0.005 (same sets)
  reranker_alone_improves          the reranker's own order > its first stage + 0.005 (same sets)
  longdoc_whole_beats_trunc512     whole-document dense > 512-token dense on needles past token 512 (the
                                   held-out domain's long pages when the run has them)

Prints one table per run and writes the JSON (--out) as each run is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from live_report import LiveReport  # noqa: E402

from encoder.evaluate import RERANK_MARGIN as MARGIN  # noqa: E402

SYSTEMS = ("random", "bm25", "dense", "sparse", "hybrid")
DENSE_OVER_RANDOM = 0.1


def _stage_outputs(workdir: Path, stage: str) -> dict:
    marker = workdir / stage / "STAGE_DONE.json"
    if not marker.is_file():
        raise FileNotFoundError(f"{marker}: the {stage} stage has not finished in {workdir}")
    return json.loads(marker.read_text(encoding="utf-8"))["outputs"]


def set_row(name: str, results: dict) -> dict:
    """nDCG@10 of each system over all queries of one evaluation (results.json of encoder.evaluate)."""
    table = results["results"]
    row = {"set": name, "queries": results["queries"], "docs": results["corpus"], "gamma": results.get("gamma")}
    for system in SYSTEMS:
        if system in table:
            row[system] = table[system]["all"]["ndcg@10"]
    reranked = [k for k in table if "rerank" in k]
    if reranked:
        # the verdict's figures: the reranked ranking the evaluation judges (fused with its first stage when
        # there was a dev split to tune β on) and its first stage over the same (sampled) queries
        verdict = results.get("reranker_verdict", {})
        row["reranked"] = verdict.get("reranked_ndcg@10", table[reranked[0]]["all"]["ndcg@10"])
        alone = results.get("reranker_alone_verdict")
        if alone:
            row["reranked_alone"] = alone["reranked_ndcg@10"]
        row["rerank_beta"] = results.get("rerank_beta")
        best = (results.get("rerank_beta_tuning") or {}).get("best_on_dev")
        if best is not None and best != row["rerank_beta"]:
            row["rerank_beta_best_on_dev"] = best  # best on dev, dropped: its gain was within the noise
        row["rerank_first_stage"] = verdict.get("first_stage", "dense")
        row["rerank_first_stage_ndcg@10"] = verdict.get("first_stage_ndcg@10", row.get(row["rerank_first_stage"]))
        row["rerank_queries"] = verdict.get("queries", results["queries"])
    diagnostics = results.get("diagnostics", {}).get("trained")
    if diagnostics:
        row["mean_doc_cosine"] = diagnostics["mean_doc_cosine"]
        row["score_length_rho"] = diagnostics["score_length_rho"]
    return row


def _mean(rows: list[dict], key: str, weight: str = "queries") -> float | None:
    values = [r[key] * r[weight] for r in rows if key in r]
    weights = [r[weight] for r in rows if key in r]
    return sum(values) / sum(weights) if weights else None


def longdoc_past512(path: Path) -> dict:
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    out = {}
    for system in ("whole dense", "trunc512 dense", "chunk512 dense", "whole hybrid", "trunc512 hybrid", "bm25"):
        values = [r["ndcg@10"] for r in rows if r["system"] == system and r.get("past512")]
        if values:
            out[system] = sum(values) / len(values)
    return out


def checks(rows: list[dict], longdoc: dict) -> dict[str, str]:
    heldout = [r for r in rows if r["set"] != "in-domain"]
    mono = [r for r in heldout if "/mono-" in r["set"]]
    cross = [r for r in heldout if "/cross-" in r["set"]]
    rerank_rows = [r for r in (heldout or rows) if "reranked" in r]

    def verdict(ok: bool | None, text: str) -> str:
        return "n/a" if ok is None else f"{'pass' if ok else 'FAIL'}: {text}"

    def compare(a: float | None, b: float | None, holds, text: str) -> str:
        return verdict(None if a is None or b is None else holds(a, b), text.format(a=a or 0.0, b=b or 0.0))

    first = _mean(rerank_rows, "rerank_first_stage_ndcg@10", "rerank_queries")
    reranked = _mean(rerank_rows, "reranked", "rerank_queries")
    return {
        "heldout_mono_hybrid_ge_bm25": compare(_mean(mono, "hybrid"), _mean(mono, "bm25"), lambda a, b: a >= b,
                                               "hybrid {a:.3f} vs BM25 {b:.3f}"),
        "heldout_cross_dense_2x_bm25": compare(_mean(cross, "dense"), _mean(cross, "bm25"), lambda a, b: a >= 2 * b,
                                               "dense {a:.3f} vs BM25 {b:.3f}"),
        "heldout_dense_above_random": compare(_mean(heldout, "dense"), _mean(heldout, "random"),
                                              lambda a, b: a >= b + DENSE_OVER_RANDOM,
                                              "dense {a:.3f} vs random {b:.3f}"),
        "reranker_not_below_first_stage": compare(reranked, first, lambda a, b: a >= b - MARGIN,
                                                  "reranked {a:.3f} vs first stage {b:.3f}"),
        "reranker_improves_first_stage": compare(reranked, first, lambda a, b: a > b + MARGIN,
                                                 "reranked {a:.3f} vs first stage {b:.3f}"),
        "reranker_alone_improves": compare(_mean(rerank_rows, "reranked_alone", "rerank_queries"), first,
                                           lambda a, b: a > b + MARGIN,
                                           "reranker alone {a:.3f} vs first stage {b:.3f}"),
        "longdoc_whole_beats_trunc512": compare(longdoc.get("whole dense"), longdoc.get("trunc512 dense"),
                                                lambda a, b: a > b, "whole {a:.3f} vs 512 tokens {b:.3f}"),
    }


def read_run(workdir: Path) -> dict:
    evaluate = _stage_outputs(workdir, "evaluate")
    rows = [set_row("in-domain", json.loads(Path(evaluate["results_json"]).read_text(encoding="utf-8")))]
    for name, path in sorted(evaluate.get("heldout", {}).items()):
        rows.append(set_row(name, json.loads(Path(path).read_text(encoding="utf-8"))))
    longdoc = {}
    marker = workdir / "longdoc" / "STAGE_DONE.json"
    if marker.is_file():
        outputs = json.loads(marker.read_text(encoding="utf-8"))["outputs"]
        # the held-out domain's real long pages when the run has them (the claim is about text no stage saw),
        # else the needle sets built from the embedded units
        heldout = [Path(h["json"]) for h in outputs.get("heldout", {}).values() if h.get("json")]
        source = heldout[0] if heldout else Path(outputs["json"]) if outputs.get("json") else None
        if source is not None:
            longdoc = {"source": "held-out domain" if heldout else "in-domain needle sets",
                       **longdoc_past512(source)}
    return {"workdir": str(workdir), "sets": rows, "longdoc_past512": longdoc, "checks": checks(rows, longdoc)}


def format_run(run: dict) -> str:
    # the three reranking columns cover the reranked (possibly sampled) queries: the first stage beside them is
    # over the same queries, so a row compares like with like
    columns = [*SYSTEMS, "rerank_first_stage_ndcg@10", "reranked_alone", "reranked"]
    headers = [*SYSTEMS, "first stage (reranked queries)", "reranked_alone", "reranked"]
    lines = [f"## {run['workdir']}", "", "| set | queries | docs | " + " | ".join(headers) + " | γ | β | doc cos |",
             "|---|---:|---:|" + "---:|" * (len(columns) + 3)]
    for row in run["sets"]:
        cells = [f"{row[c]:.3f}" if c in row else "-" for c in columns]
        cosine = f"{row['mean_doc_cosine']:.2f}" if "mean_doc_cosine" in row else "-"
        beta = "-" if row.get("rerank_beta") is None else f"{row['rerank_beta']:g}"
        if "rerank_beta_best_on_dev" in row:
            beta += f" (dev best {row['rerank_beta_best_on_dev']:g}, within noise)"
        lines.append(f"| {row['set']} | {row['queries']} | {row['docs']} | " + " | ".join(cells)
                     + f" | {row['gamma']} | {beta} | {cosine} |")
    if run["longdoc_past512"]:
        figures = {k: v for k, v in run["longdoc_past512"].items() if k != "source"}
        lines += ["", f"long documents ({run['longdoc_past512'].get('source', '')}), needles past token 512: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in figures.items())]
    lines += ["", *(f"- {name}: {text}" for name, text in run["checks"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", type=Path, help="pipeline work directories (workdir=...)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/quality.json"), help="JSON written as it goes")
    args = parser.parse_args(argv)
    report = LiveReport(args.out, {"bench": "quality"}, sections=("runs",))
    failed = False
    for workdir in args.workdirs:
        try:
            run = read_run(workdir)
        except (FileNotFoundError, KeyError, json.JSONDecodeError) as err:
            print(f"{workdir}: {err}", file=sys.stderr)
            report.add("runs", {"workdir": str(workdir), "error": str(err)})
            failed = True
            continue
        print(format_run(run) + "\n")
        report.add("runs", run)
    report.finish()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
