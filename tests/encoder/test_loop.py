"""What every trainer refuses before doing any work: invalid config values (named by their dotted field) and
a run directory another live process holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from mlm_run_helpers import CONFIG, ROOT

from encoder import train_contrastive, train_mlm, train_reranker
from encoder.config import load_config

BAD_VALUES = [
    ("optim.lr=0", "optim.lr: must be positive"),
    ("optim.lr=-1e-3", "optim.lr: must be positive"),
    ("checkpoint.every=0", "checkpoint.every: must be >= 1"),
    ("train.grad_accum=0", "train.grad_accum: must be >= 1"),
    ("train.max_steps=0", "train.max_steps: must be >= 1"),
    ("train.max_steps=-3", "train.max_steps: must be >= 1"),
    ("optim.betas=[0.9]", "optim.betas: expected 2 values"),
    ("data.max_length=-5", "data.max_length: must be >= 3"),
    ("optim.warmup_ratio=2", "optim.warmup_ratio: must be in"),
    ("train.precision=fp16", "train.precision: expected fp32 or bf16"),
    ("log.every=0", "log.every: must be >= 1"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_invalid_values_are_refused_before_any_work(override, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train_mlm.main(["--config", CONFIG, override, f"checkpoint.dir={run_dir}", "data.shards=/nonexistent"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


@pytest.mark.parametrize(("run_config", "override", "message"), [
    (train_contrastive.TRMRunConfig, "data.batch_size=0", "data.batch_size: must be >= 1"),
    (train_contrastive.TRMRunConfig, "data.mining_rank_window=[5,2]", "data.mining_rank_window"),
    (train_contrastive.TRMRunConfig, "train.revntk_factor=0.5", "train.revntk_factor: must be >= 1"),
    (train_reranker.RerankerRunConfig, "loss.temperature=0", "loss.temperature: must be positive"),
    (train_reranker.RerankerRunConfig, "data.num_hard_negatives=-1", "data.num_hard_negatives: must be >= 0"),
    (train_reranker.RerankerRunConfig, "optim.lr_scales={head: 0}", "optim.lr_scales.head: must be positive"),
])
def test_retrieval_trainers_validate_their_sections(run_config, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(run_config, None, [override])


def hold_lock(directory) -> subprocess.Popen:
    """Another live process holding `directory` (what a second run meets)."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from encoder.runlock import RunLock
        RunLock({str(directory)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_held_run_directory_is_refused_naming_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        code = train_mlm.main(["--config", CONFIG, f"checkpoint.dir={run_dir}", "data.shards=/nonexistent"])
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and str(run_dir) in err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing of the holder's was touched


def test_lock_is_released_when_the_holder_dies(tmp_path):
    from encoder.runlock import RunLock

    holder = hold_lock(tmp_path)
    holder.kill()
    holder.wait()
    with RunLock(tmp_path):  # a killed run never leaves a stale lock
        pass
