"""The pipeline's cheap guarantees: `--only` stops after its stages, a second pipeline on one workdir is
refused, and every stage's overrides are validated before the first stage runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from encoder import pipeline
from encoder.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SMALL_DATA = ["data.embedded_size=tiny", "data.use_udhr=false"]


def test_only_data_runs_the_data_stage_and_exits_zero(tmp_path, capsys):
    code = pipeline.main([f"workdir={tmp_path}", *SMALL_DATA, "--only", "data"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "data" / "STAGE_DONE.json").read_text())["stage"] == "data"
    assert not (tmp_path / "tokenizer").exists()


def test_a_second_pipeline_on_the_workdir_is_refused(tmp_path, capsys):
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from encoder.runlock import RunLock
        RunLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert pipeline.main([f"workdir={tmp_path}", *SMALL_DATA, "--only", "data"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and "pipeline workdir" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("trm_ft.overrides=[optim.lr=0]", "trm_ft: optim.lr: must be positive"),
    ("reranker.overrides=[train.max_steps=-1]", "reranker: train.max_steps: must be >= 1"),
    ("mlm_stage2.overrides=[data.no_such_key=1]", "mlm_stage2: data.no_such_key: unknown config key"),
    ("longdoc_overrides=[lengths=oops]", "longdoc_overrides: lengths: expected a list"),
])
def test_stage_overrides_are_validated_at_start_up(override, message, tmp_path, capsys):
    assert pipeline.main([f"workdir={tmp_path}", override]) == 2
    assert message in capsys.readouterr().err
    assert not tmp_path.joinpath("data").exists()


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("pipeline_*.yaml")))
def test_every_pipeline_preset_passes_the_start_up_checks(preset, tmp_path):
    config = load_config(pipeline.PipelineConfig, ROOT / "configs" / preset, [f"workdir={tmp_path}"])
    pipeline.Pipeline(config, log=lambda _: None)
