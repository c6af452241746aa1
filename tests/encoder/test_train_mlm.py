"""The MLM trainer end to end on shards built from the embedded catalogs: learning, exact resume after
SIGKILL, corrupt checkpoints refused, NaN steps skipped, stage 2 from stage 1 with the larger RoPE base."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from mlm_run_helpers import CONFIG, ROOT, env, overrides, run_trainer, trainer_command

from encoder import train_mlm
from encoder.config import load_config
from encoder.distributed import init_distributed
from encoder.heads import MaskedLM
from encoder.mlm_data import MLMData
from encoder.training import read_metrics


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_run(mlm_shards, tmp_path_factory):
    """40 steps of the tiny preset in this process (reused by the stage-2 and corrupt-checkpoint tests)."""
    run_dir = tmp_path_factory.mktemp("stage1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = load_config(train_mlm.MLMRunConfig, CONFIG,
                             overrides(mlm_shards, run_dir, **{"train.max_steps": 40, "checkpoint.every": 20,
                                                               "optim.lr": 2e-3}))
        summary = train_mlm.train(config, resume="auto")
    finally:
        torch.set_num_threads(threads)
    return run_dir, summary


def test_tiny_mlm_loss_falls(trained_run):
    run_dir, summary = trained_run
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 41)) and summary["step"] == 40
    losses = [r["loss"] for r in records]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 7.0  # ~ln(2048) at initialisation
    assert last < first - 1.0, f"MLM loss did not fall: {first:.3f} -> {last:.3f}"
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["masked"] > 0 and r["tokens_per_s"] > 0 for r in records)
    # LR: warm-up over ceil(0.06 * 40) = 3 steps, then linear decay
    assert records[2]["lr"] == pytest.approx(2e-3) and records[-1]["lr"] < records[10]["lr"]
    assert (run_dir / "loss.png").stat().st_size > 1000 and list((run_dir / "tensorboard").iterdir())
    assert (run_dir / "config.yaml").exists() and (run_dir / "ckpt-000040" / "config.yaml").exists()
    assert sorted(p.name for p in run_dir.glob("ckpt-*")) == ["ckpt-000020", "ckpt-000040"]


def test_exact_resume_after_sigkill(mlm_shards, tmp_path):
    steps, every = 12, 4
    common = {"train.max_steps": steps, "checkpoint.every": every, "log.tensorboard": False, "log.plot": False}
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = run_trainer(overrides(mlm_shards, straight_dir, **common) + ["--resume", "none"])
    assert straight.returncode == 0, straight.stderr[-3000:]

    # the same run, SIGKILLed once it is past its second checkpoint (mid-training, no clean shutdown)
    proc = subprocess.Popen(trainer_command(overrides(mlm_shards, killed_dir, **common)), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 150
    while not (killed_dir / "ckpt-000008" / "manifest.json").exists():
        assert proc.poll() is None, f"trainer exited early: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint at step 8 in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / f"ckpt-{steps:06d}").exists(), "the run finished before it could be killed"

    resumed = run_trainer(overrides(mlm_shards, killed_dir, **common) + ["--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 8" in resumed.stdout

    losses = {name: [(r["step"], r["loss"], r["accuracy"]) for r in read_metrics(d / "metrics.jsonl")]
              for name, d in (("straight", straight_dir), ("killed", killed_dir))}
    assert [s for s, _, _ in losses["killed"]] == list(range(1, steps + 1))
    assert losses["killed"] == losses["straight"]  # bit-identical losses, steps 1..12
    final_a = torch.load(straight_dir / f"ckpt-{steps:06d}" / "model.pt", weights_only=True)
    final_b = torch.load(killed_dir / f"ckpt-{steps:06d}" / "model.pt", weights_only=True)
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_corrupt_checkpoint_is_refused(trained_run, tmp_path, capsys, one_thread):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained_run[0], run_dir)
    weights = run_dir / "ckpt-000040" / "optimizer.pt"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    code = train_mlm.main(["--config", CONFIG, *overrides({"shards": _shards(trained_run), "vocab_size": 2048},
                                                          run_dir, **{"train.max_steps": 41}), "--resume", "auto"])
    err = capsys.readouterr().err
    assert code == 2
    assert "ckpt-000040/optimizer.pt: checksum mismatch" in err and "refusing" in err
    (run_dir / "ckpt-000040" / "manifest.json").unlink()
    assert train_mlm.main(["--config", CONFIG, *overrides({"shards": _shards(trained_run), "vocab_size": 2048},
                                                          run_dir), "--resume", "auto"]) == 2
    assert "manifest.json: missing manifest" in capsys.readouterr().err


def _shards(trained_run) -> str:
    return load_config(train_mlm.MLMRunConfig, trained_run[0] / "config.yaml").data.shards


def test_nan_loss_is_skipped_with_a_warning(mlm_shards, tmp_path, monkeypatch, one_thread):
    forward = MaskedLM.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = forward(self, batch)
        calls["n"] += 1
        if calls["n"] in (5, 6):  # both micro-batches of step 3
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MaskedLM, "forward", poisoned)
    config = load_config(train_mlm.MLMRunConfig, CONFIG,
                         overrides(mlm_shards, tmp_path, **{"train.max_steps": 5, "checkpoint.every": 5,
                                                            "log.tensorboard": False}))
    with pytest.warns(RuntimeWarning, match="step 2: non-finite loss"):
        summary = train_mlm.train(config, resume="none")
    assert summary["skipped_steps"] == 1 and summary["step"] == 5
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [0, 0, 1, 0, 0]
    weights = torch.load(tmp_path / "ckpt-000005" / "model.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_stage2_starts_from_stage1_with_rope_160k(trained_run, tmp_path):
    run_dir, _ = trained_run
    stage2 = str(ROOT / "configs" / "tiny_mlm_stage2.yaml")
    config = load_config(train_mlm.MLMRunConfig, stage2,
                         overrides({"shards": _shards(trained_run), "vocab_size": 2048}, tmp_path,
                                   **{"train.init_from": run_dir}))
    assert config.model.rope_theta == 160000.0 and config.data.max_length == 1024 and config.optim.lr == 2e-4
    special = MLMData(config.data, init_distributed("cpu"), 0).special
    model = train_mlm.build_model(config, special)
    stage1 = torch.load(run_dir / "ckpt-000040" / "model.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stage1.items() if "rotary" not in k)
    assert model.encoder.config.rope_theta == 160000.0 and model.encoder.rotary.theta == 160000.0


def test_help_describes_the_cli():
    out = subprocess.run(trainer_command(["--help"]), cwd=ROOT, env=env(), capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--resume", "--init-from", "--stop-after", "auto|none|PATH"):
        assert flag in out.stdout
