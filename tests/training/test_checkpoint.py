"""CheckpointManager: atomic layout, manifest step, keep-last-N, exact RNG restore, corrupt checkpoints refused."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from encoder.checkpoint import CheckpointError, CheckpointManager, resolve_checkpoint


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_save_load_roundtrip_restores_everything(tmp_path):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = manager.save(7, model, optimizer, scheduler={"step": 7}, sampler={"epoch": 1, "position": 4},
                        extra={"tokens": 123}, rank_extra={"gen": 5})
    assert path.name == "ckpt-000007" and not list(tmp_path.glob("*.tmp-*"))

    fresh, fresh_opt = _model_and_optimizer(seed=99)
    loaded = manager.load(manager.latest_complete(), fresh, fresh_opt)
    assert loaded.step == 7 and loaded.sampler == {"epoch": 1, "position": 4}
    assert loaded.scheduler == {"step": 7} and loaded.extra == {"tokens": 123} and loaded.rank_extra == {"gen": 5}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], fresh_opt.state_dict()["state"][0]["exp_avg"])


def test_rng_state_is_restored_exactly(tmp_path):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path)
    torch.manual_seed(11), random.seed(12), np.random.seed(13)
    manager.save(1, model, optimizer)
    after_save = (random.random(), float(np.random.rand()), torch.rand(3))
    torch.manual_seed(0), random.seed(0), np.random.seed(0)  # scramble
    manager.load(manager.latest_complete(), model, optimizer)
    after_load = (random.random(), float(np.random.rand()), torch.rand(3))
    assert after_save[:2] == after_load[:2] and torch.equal(after_save[2], after_load[2])


def test_keep_last_and_step_from_manifest(tmp_path):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (3, 10, 200):
        manager.save(step, model, optimizer)
    assert [s for s, _ in manager.complete_checkpoints()] == [10, 200]
    # the step is read from the manifest, not parsed from the name
    (tmp_path / "ckpt-000200").rename(tmp_path / "ckpt-zzz")
    assert manager.latest_complete().name == "ckpt-zzz"
    assert manager.load(tmp_path / "ckpt-zzz", model, optimizer).step == 200


def test_unfinished_temporary_is_ignored_and_cleaned(tmp_path):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path)
    manager.save(5, model, optimizer)
    (tmp_path / "ckpt-000009.tmp-12345").mkdir()  # a process killed mid-save
    assert manager.latest_complete().name == "ckpt-000005"
    manager.remove_stale_temporaries()
    assert not (tmp_path / "ckpt-000009.tmp-12345").exists()


def test_corrupt_checkpoint_is_refused_naming_the_file(tmp_path):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path)
    path = manager.save(4, model, optimizer)
    data = bytearray((path / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.pt: checksum mismatch"):
        manager.latest_complete()
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        resolve_checkpoint(tmp_path)


def test_missing_manifest_is_refused(tmp_path):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path)
    path = manager.save(4, model, optimizer)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing manifest"):
        manager.latest_complete()


def test_missing_file_is_refused(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = CheckpointManager(tmp_path).save(4, model, optimizer)
    (path / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: listed in .* but missing"):
        CheckpointManager(tmp_path).latest_complete()
