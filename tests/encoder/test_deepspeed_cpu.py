"""DeepSpeed ZeRO-2 on CPU (gloo): two processes train, checkpoint, stop, and resume from the checkpoint."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlm_run_helpers import CONFIG, ROOT, env, free_port, overrides

from encoder.engine import deepspeed_available
from encoder.training import read_metrics

pytestmark = pytest.mark.skipif(not deepspeed_available(), reason="deepspeed is not installed (pip install deepspeed)")


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "encoder.train_mlm", "--config", CONFIG, *args]
    return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)


def test_zero2_two_processes_checkpoint_and_resume(mlm_shards, tmp_path):
    args = overrides(mlm_shards, tmp_path, **{
        "train.engine": "deepspeed", "train.deepspeed_config": "launch/deepspeed/zero2.json",
        "train.precision": "fp32", "train.max_steps": 4, "checkpoint.every": 2, "train.grad_accum": 1,
        "model.hidden_size": 64, "model.intermediate_size": 128, "log.tensorboard": False})
    first = _launch(args + ["--stop-after", "2", "--resume", "auto"])
    assert first.returncode == 0, first.stderr[-4000:]
    checkpoint = tmp_path / "ckpt-000002"
    assert (checkpoint / "deepspeed" / "state").is_dir()  # ZeRO's sharded optimizer state, one file per rank
    assert {p.name for p in checkpoint.glob("rank-*.pt")} == {"rank-00000.pt", "rank-00001.pt"}
    assert not (tmp_path / "ckpt-000004").exists()

    second = _launch(args + ["--resume", "auto"])
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stdout and "at step 2" in second.stdout
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["masked"] > 0 and r["skipped"] == 0 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert (tmp_path / "ckpt-000004" / "model.pt").is_file()  # consolidated weights for init-from / export


@pytest.mark.parametrize("preset", ["zero1", "zero2"])
def test_bf16_zero_saves_fp32_master_weights(mlm_shards, tmp_path, preset):
    """model.pt (read by --init-from, export, evaluation) holds the optimizer's fp32 master weights, not the
    bf16 copies the module computes with; gradients accumulate in fp32 (the presets' data_types)."""
    import json

    import torch

    from encoder.heads import MaskedLM
    from encoder.train_mlm import MLMRunConfig

    assert json.loads((ROOT / f"launch/deepspeed/{preset}.json").read_text())["data_types"] == {
        "grad_accum_dtype": "fp32"}
    args = overrides(mlm_shards, tmp_path, **{
        "train.engine": "deepspeed", "train.deepspeed_config": f"launch/deepspeed/{preset}.json",
        "train.precision": "bf16", "train.max_steps": 2, "checkpoint.every": 2, "train.grad_accum": 2,
        "optim.lr": 1e-3, "model.hidden_size": 64, "model.intermediate_size": 128, "log.tensorboard": False})
    run = _launch(args)
    assert run.returncode == 0, "\n".join(line for line in run.stderr.splitlines() if "error" in line.lower())[-4000:]
    state = torch.load(tmp_path / "ckpt-000002" / "model.pt", weights_only=True)
    weights = [v for k, v in state.items() if v.is_floating_point() and "norm" not in k.lower()]
    assert all(v.dtype == torch.float32 for v in weights)
    off_grid = sum(int((v != v.bfloat16().float()).sum()) for v in weights)
    assert off_grid > 0.5 * sum(v.numel() for v in weights), "model.pt holds bf16-rounded weights"
    from encoder.config import load_config

    config = load_config(MLMRunConfig, tmp_path / "config.yaml")
    MaskedLM(config.model).load_state_dict(state)  # strict: every key, tied decoder included
