"""The main job end to end on a reduced embedded set: every stage, every artefact, and the resume path."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest
from fresh_python import run_isolated

from encoder.config import load_config
from encoder.pipeline import STAGES, Pipeline, PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
REDUCED = [
    "data.embedded_size=tiny",
    "tokenizer.vocab_size=2000",
    "mlm_stage1.overrides=[train.max_steps=30, checkpoint.every=15]",
    "mlm_stage2.overrides=[train.max_steps=10, checkpoint.every=10]",
    "trm_cpt.overrides=[train.max_steps=30]",
    "trm_ft.overrides=[train.max_steps=30]",
    "reranker.overrides=[train.max_steps=30]",
    "rerank_top_k=10",
]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    config = load_config(PipelineConfig, ROOT / "configs/pipeline_tiny.yaml", [f"workdir={workdir}", *REDUCED])
    messages: list[str] = []
    start = time.perf_counter()
    records = Pipeline(config, log=messages.append).run()
    return config, records, messages, time.perf_counter() - start


@pytest.mark.slow
def test_every_stage_completes_with_its_artefacts(pipeline_run):
    config, records, _, _ = pipeline_run
    workdir = Path(config.workdir)
    expected = [s for s in STAGES if s != "longdoc" or config.longdoc]
    assert list(records) == expected
    for stage in expected:
        assert (workdir / stage / "STAGE_DONE.json").is_file(), stage
    for stage in ("mlm_stage1", "mlm_stage2", "trm_cpt", "trm_ft", "reranker"):
        metrics = (Path(records[stage]["outputs"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in metrics if '"loss"' in line]
        assert losses and all(x == x for x in losses), stage  # logged, and no NaN
    report_dir = workdir / "report"
    for png in ("loss_curves.png", "mlm_accuracy.png", "matryoshka.png"):
        assert (report_dir / png).stat().st_size > 1000, png


@pytest.mark.slow
def test_mlm_accuracy_on_unseen_text_is_reported_for_both_stages(pipeline_run):
    config, records, _, _ = pipeline_run
    scores = json.loads(Path(records["evaluate"]["outputs"]["mlm_accuracy"]).read_text())
    assert set(scores) == {"in-domain"}  # the embedded data has no held-out-domain set
    for stage in ("mlm_stage1", "mlm_stage2"):
        assert 0.0 <= scores["in-domain"][stage]["accuracy"] <= 1.0 and scores["in-domain"][stage]["masked"] > 100
    report = (Path(config.workdir) / "report" / "report.md").read_text()
    assert "## MLM: masked-token accuracy on text no stage trained on" in report
    assert f"{scores['in-domain']['mlm_stage2']['accuracy']:.3f}" in report


@pytest.mark.slow
def test_report_table_has_numbers_for_every_row(pipeline_run):
    config, records, _, _ = pipeline_run
    report = (Path(config.workdir) / "report" / "report.md").read_text()
    section = report.split("### ndcg@10", 1)[1].split("###", 1)[0]
    rows = {line.split("|")[1].strip(): line
            for line in section.splitlines() if line.startswith("| ") and "---" not in line}
    for system in ("bm25", "dense", "sparse", "hybrid", "hybrid + rerank@10"):
        assert system in rows, f"{system} missing from the report table"
        cells = [c.strip() for c in rows[system].split("|")[2:-1]]
        assert cells and all(re.fullmatch(r"\d+(\.\d+)?", c) for c in cells), rows[system]
    # per-language columns: at least the 5 scripts' worth of languages
    header = next(line for line in section.splitlines() if line.startswith("|"))
    assert len(header.split("|")) - 2 >= 6


@pytest.mark.slow
def test_export_loads_in_sentence_transformers_offline(pipeline_run):
    _, records, _, _ = pipeline_run
    exports = records["export"]["outputs"]
    script = textwrap.dedent(f"""
        import sys
        try:
            import encoder  # noqa: F401
            sys.exit("our package must not be importable here")
        except ImportError:
            pass
        from sentence_transformers import CrossEncoder, SentenceTransformer
        model = SentenceTransformer({exports['trm']!r}, trust_remote_code=True, device="cpu")
        emb = model.encode(["Hello world", "Привет, мир", "مرحبا بالعالم"], normalize_embeddings=True)
        assert emb.shape[0] == 3 and abs(float((emb[0] ** 2).sum()) - 1.0) < 1e-4, emb.shape
        scores = CrossEncoder({exports['reranker']!r}, trust_remote_code=True, device="cpu").predict(
            [("Hello", "Hello world"), ("Hello", "Привет")])
        assert len(scores) == 2
        print("ok", emb.shape)
    """)
    result = run_isolated(["-c", script], Path("/"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


@pytest.mark.slow
def test_rerun_skips_complete_stages(pipeline_run):
    config, records, _, _ = pipeline_run
    messages: list[str] = []
    start = time.perf_counter()
    again = Pipeline(config, log=messages.append).run()
    assert time.perf_counter() - start < 30
    assert all("skipped" in m for m in messages if m.startswith("[pipeline]") and ": " in m and "all stages" not in m)
    assert {k: v["key"] for k, v in again.items()} == {k: v["key"] for k, v in records.items()}


@pytest.mark.slow
def test_changed_settings_retrain_from_scratch(pipeline_run, tmp_path):
    """A stage whose settings changed must not resume the old run's checkpoints (that would skip training)."""
    config, records, _, _ = pipeline_run
    changed = load_config(PipelineConfig, ROOT / "configs/pipeline_tiny.yaml",
                          [f"workdir={config.workdir}", *REDUCED, "reranker.overrides=[train.max_steps=12]"])
    messages: list[str] = []
    again = Pipeline(changed, log=messages.append).run(only=("reranker",))
    assert any("reranker: settings or inputs changed" in m for m in messages)
    assert again["reranker"]["key"] != records["reranker"]["key"]
    run_dir = Path(again["reranker"]["outputs"]["run_dir"])
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 12 and steps == sorted(steps)  # a fresh 12-step run, not the old 30-step checkpoint
    # editing the preset file itself (same path, same overrides) also counts as changed settings
    preset = tmp_path / "reranker.yaml"
    preset.write_text((ROOT / "configs/tiny_reranker.yaml").read_text().replace("base: reranker.yaml",
                                                                                 f"base: {ROOT}/configs/reranker.yaml"))
    edited = load_config(PipelineConfig, ROOT / "configs/pipeline_tiny.yaml",
                         [f"workdir={config.workdir}", *REDUCED, f"reranker.config={preset}",
                          "reranker.overrides=[train.max_steps=8]"])
    first = Pipeline(edited, log=lambda _: None).run(only=("reranker",))["reranker"]["key"]
    preset.write_text(preset.read_text().replace("lr: 5.0e-4", "lr: 4.0e-4"))
    messages.clear()
    assert Pipeline(edited, log=messages.append).run(only=("reranker",))["reranker"]["key"] != first
    assert any("reranker: settings or inputs changed" in m for m in messages)
    Pipeline(config, log=lambda _: None).run(only=("reranker",))  # restore for the other tests' module state
