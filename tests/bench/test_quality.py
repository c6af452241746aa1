"""bench/quality.py reads saved pipeline results (hand-made here) and marks each quality check pass / FAIL."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load_bench


def results(queries: int, first_stage: str = "hybrid", fused: tuple[float, float] | None = None,
            **ndcg: float) -> dict:
    """One saved evaluation; `hybrid_rerank` is the reranker's own order, `fused` (β, nDCG@10) the fusion."""
    names = {"hybrid_rerank": f"{first_stage} + rerank@20"}
    table = {names.get(system, system): {"all": {"ndcg@10": value, "queries": queries}}
             for system, value in ndcg.items()}
    out = {"queries": queries, "corpus": 50, "gamma": 0.4, "results": table,
           "diagnostics": {"trained": {"mean_doc_cosine": 0.3, "score_length_rho": 0.1, "warnings": []}}}
    if "hybrid_rerank" in ndcg:
        first = {"first_stage": first_stage, "first_stage_ndcg@10": ndcg[first_stage], "queries": queries}
        out["reranker_alone_verdict"] = {**first, "reranked_ndcg@10": ndcg["hybrid_rerank"]}
        out["reranker_verdict"] = {**first, "reranked_ndcg@10": fused[1] if fused else ndcg["hybrid_rerank"]}
        out["rerank_beta"] = fused[0] if fused else 1.0
        if fused:
            table[f"{first_stage} + rerank@20 fused"] = {"all": {"ndcg@10": fused[1], "queries": queries}}
    return out


def fake_run(root: Path, sets: dict[str, dict], longdoc_rows: list[dict] | None = None) -> Path:
    (root / "evaluate").mkdir(parents=True)
    paths = {}
    for name, result in sets.items():
        path = root / "evaluate" / f"{name.replace('/', '__')}.json"
        path.write_text(json.dumps(result))
        paths[name] = str(path)
    outputs = {"results_json": paths.pop("in-domain"), "heldout": paths}
    (root / "evaluate" / "STAGE_DONE.json").write_text(json.dumps({"outputs": outputs}))
    if longdoc_rows is not None:
        (root / "longdoc").mkdir()
        (root / "longdoc" / "longdoc.json").write_text(json.dumps({"rows": longdoc_rows}))
        (root / "longdoc" / "STAGE_DONE.json").write_text(json.dumps({"outputs": {"json": str(root / "longdoc" /
                                                                                          "longdoc.json")}}))
    return root


def test_checks_follow_the_saved_figures(tmp_path, capsys):
    bench = load_bench("quality")
    run = fake_run(tmp_path / "run", {
        "in-domain": results(100, random=0.02, bm25=0.5, dense=0.6, sparse=0.5, hybrid=0.7, hybrid_rerank=0.9),
        # held-out: hybrid above BM25 on mono (pooled by queries: (0.6*10 + 0.3*30)/40 = 0.375 vs 0.35)
        "debian-handbook/mono-de": results(10, random=0.05, bm25=0.5, dense=0.4, sparse=0.5, hybrid=0.6,
                                           hybrid_rerank=0.55),
        "debian-handbook/mono-en": results(30, random=0.05, bm25=0.3, dense=0.2, sparse=0.3, hybrid=0.3,
                                           hybrid_rerank=0.3),
        "debian-handbook/cross-de": results(20, random=0.05, bm25=0.1, dense=0.15, sparse=0.1, hybrid=0.2,
                                            hybrid_rerank=0.1),
    }, longdoc_rows=[{"system": "whole dense", "ndcg@10": 0.8, "past512": True},
                     {"system": "trunc512 dense", "ndcg@10": 0.3, "past512": True},
                     {"system": "trunc512 dense", "ndcg@10": 0.9, "past512": False}])
    out = tmp_path / "quality.json"
    assert bench.main([str(run), "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["complete"]
    checks = saved["runs"][0]["checks"]
    assert checks["heldout_mono_hybrid_ge_bm25"].startswith("pass: hybrid 0.375 vs BM25 0.350")
    assert checks["heldout_cross_dense_2x_bm25"].startswith("FAIL: dense 0.150 vs BM25 0.100")
    # held-out reranking, pooled: (0.55*10 + 0.3*30 + 0.1*20)/60 = 0.275 against hybrid (6 + 9 + 4)/60 = 0.317
    assert checks["reranker_not_below_first_stage"].startswith("FAIL: reranked 0.275 vs first stage 0.317")
    assert checks["reranker_improves_first_stage"].startswith("FAIL")
    # dense pooled (4 + 6 + 3)/60 = 0.217, at least 0.1 above random 0.05
    assert checks["heldout_dense_above_random"].startswith("pass: dense 0.217 vs random 0.050")
    assert checks["longdoc_whole_beats_trunc512"] == "pass: whole 0.800 vs 512 tokens 0.300"
    printed = capsys.readouterr().out
    # the reranking columns: the first stage over the reranked queries, the reranker alone, the fused ranking
    assert "| hybrid | first stage (reranked queries) | reranked_alone | reranked | γ | β | doc cos |" in printed
    row = ("| debian-handbook/cross-de | 20 | 50 | 0.050 | 0.100 | 0.150 | 0.100 | 0.200 | 0.200 | 0.100 | 0.100 "
           "| 0.4 | 1 | 0.30 |")
    assert row in printed


def test_reranker_checks_judge_the_fused_ranking_and_report_the_reranker_alone(tmp_path):
    """A reranker that hurts alone, fused with β 0 on dev (= its first stage): not below, not better, and the
    reranker-alone check says it fails on its own."""
    bench = load_bench("quality")
    run = bench.read_run(fake_run(tmp_path / "run", {
        "in-domain": results(50, random=0.02, bm25=0.5, dense=0.6, sparse=0.5, hybrid=0.7, hybrid_rerank=0.9),
        "debian-handbook/mono-de": results(40, random=0.05, bm25=0.5, dense=0.4, sparse=0.5, hybrid=0.6,
                                           hybrid_rerank=0.2, fused=(0.0, 0.6)),
    }))
    checks = run["checks"]
    assert checks["reranker_not_below_first_stage"] == "pass: reranked 0.600 vs first stage 0.600"
    assert checks["reranker_improves_first_stage"].startswith("FAIL")
    assert checks["reranker_alone_improves"] == "FAIL: reranker alone 0.200 vs first stage 0.600"


def test_a_beta_dropped_as_noise_is_shown_beside_the_beta_used(tmp_path):
    bench = load_bench("quality")
    mono = results(40, random=0.05, bm25=0.5, dense=0.4, sparse=0.5, hybrid=0.6, hybrid_rerank=0.5, fused=(0.0, 0.6))
    mono["rerank_beta_tuning"] = {"split": "dev", "beta": 0.0, "best_on_dev": 0.4, "gain": 0.01, "gain_stderr": 0.02}
    run = bench.read_run(fake_run(tmp_path / "run", {
        "in-domain": results(50, random=0.02, bm25=0.5, dense=0.6, sparse=0.5, hybrid=0.7, hybrid_rerank=0.9),
        "debian-handbook/mono-de": mono}))
    assert "| 0.4 | 0 (dev best 0.4, within noise) | 0.30 |" in bench.format_run(run)
    assert "| 0.4 | 1 | 0.30 |" in bench.format_run(run)  # the in-domain row: no tuning record, nothing added


def test_a_run_without_heldout_sets_marks_those_checks_not_applicable(tmp_path):
    bench = load_bench("quality")
    run = bench.read_run(fake_run(tmp_path / "run", {"in-domain": results(5, random=0.1, bm25=0.5, dense=0.5)}))
    assert run["checks"]["heldout_mono_hybrid_ge_bm25"] == "n/a"
    assert run["checks"]["longdoc_whole_beats_trunc512"] == "n/a"


def test_an_unfinished_run_is_reported_not_crashed(tmp_path, capsys):
    bench = load_bench("quality")
    out = tmp_path / "quality.json"
    assert bench.main([str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "the evaluate stage has not finished" in capsys.readouterr().err
    assert json.loads(out.read_text())["runs"][0]["error"]
