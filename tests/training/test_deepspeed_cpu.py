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
