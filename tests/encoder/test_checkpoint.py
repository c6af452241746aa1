"""CheckpointManager: atomic layout, manifest step, keep-last-N, exact RNG restore, corrupt checkpoints refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.checkpoint import CheckpointError, CheckpointManager, resolve_checkpoint, sha256_file


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


class _RunsCode:
    """A pickle payload that would run code on load (what a crafted checkpoint does)."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.parametrize("victim", ["trainer.pt", "rank-00000.pt"])
def test_crafted_state_file_is_refused_without_running_code(tmp_path, monkeypatch, victim):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path / "run")
    path = manager.save(3, model, optimizer, extra={"tokens": 1})
    torch.save({"step": 3, "scheduler": None, "extra": {}, "payload": _RunsCode()}, path / victim)
    # the attacker rewrites the manifest too: the checksum cannot protect against this
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][victim] = sha256_file(path / victim)
    (path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{victim}: refused to load"):
        manager.load(path, model, optimizer)
    assert not (tmp_path / "pwned.txt").exists()


def test_state_files_load_with_weights_only(tmp_path):
    """Every file a checkpoint holds (model, optimizer, trainer, rank) is tensors and plain containers."""
    model, optimizer = _model_and_optimizer()
    np.random.seed(5)
    path = CheckpointManager(tmp_path).save(2, model, optimizer, sampler={"epoch": 0, "position": 3},
                                            rank_extra={"generator": torch.Generator().get_state()})
    for file in path.glob("*.pt"):
        torch.load(file, weights_only=True)


def test_half_deleted_old_checkpoint_does_not_block_resume(tmp_path):
    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(1, model, optimizer)
    manager.save(2, model, optimizer)
    (tmp_path / "ckpt-000001" / "manifest.json").unlink()  # an old prune killed mid-delete
    with pytest.warns(RuntimeWarning, match=r"skipping incomplete checkpoint .*ckpt-000001"):
        assert manager.latest_complete().name == "ckpt-000002"
    # the newest incomplete is still refused: resuming from an older one would silently drop work
    (tmp_path / "ckpt-000002" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt-000002.*missing manifest"):
        manager.latest_complete()


def test_prune_renames_before_deleting(tmp_path, monkeypatch):
    """A kill during a prune leaves only a `*.tmp-*` directory (cleaned at start-up), never a checkpoint
    without its manifest under its real name."""
    import encoder.checkpoint as checkpoint_module

    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(1, model, optimizer)

    real_rmtree = checkpoint_module.shutil.rmtree

    def killed_mid_delete(path, ignore_errors=False):
        if not (Path(path) / "manifest.json").is_file():  # not a checkpoint being pruned
            return real_rmtree(path, ignore_errors=ignore_errors)
        (Path(path) / "manifest.json").unlink()  # the first files go, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        manager.save(2, model, optimizer)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" not in p.name) == ["ckpt-000002"]
    assert manager.latest_complete().name == "ckpt-000002"
    manager.remove_stale_temporaries()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000002"]


def test_resume_hashes_each_file_once(tmp_path, monkeypatch):
    """Discovery reads manifests only; `load` verifies (on rank 0) once."""
    import encoder.checkpoint as checkpoint_module
    from encoder.loop import resume_path

    model, optimizer = _model_and_optimizer()
    manager = CheckpointManager(tmp_path)
    path = manager.save(4, model, optimizer)
    hashed = []
    real = checkpoint_module.sha256_file
    monkeypatch.setattr(checkpoint_module, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    manager.load(resume_path(manager, "auto"), model, optimizer)
    assert sorted(hashed) == sorted(p.name for p in path.iterdir() if p.name != "manifest.json")
