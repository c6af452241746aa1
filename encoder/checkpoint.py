"""Atomic, verifiable training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory written in full under a temporary name, then renamed:

    ckpt-000123.tmp-<pid>/   every file written and fsynced (never read by `latest_complete`)
    ckpt-000123/             after the rename; `manifest.json` (written last) holds the step and the
                             sha256 of every other file, so a torn or edited checkpoint is detected
      manifest.json          {"step": 123, "files": {"model.pt": "<sha256>", ...}, "world_size": W, ...}
      model.pt / optimizer.pt (or whatever the engine's `state_writer` writes, e.g. deepspeed/)
      trainer.pt             step, scheduler state, extra (rank 0)
      rank-00000.pt ...      per rank: sampler state, python/numpy/torch RNG states, rank_extra
      config.yaml            the run config (optional)

The step always comes from the manifest, never from the directory name. In a multi-process run every
rank calls `save`/`load` (the directory must be on a filesystem all ranks share); rank 0 writes the
shared files, the manifest and renames.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import save_config
from .distributed import barrier, rank, world_size

MANIFEST = "manifest.json"
FORMAT = "longenc-checkpoint/1"
PREFIX = "ckpt-"

StateIO = Callable[[Path], None]  # writes or reads model + optimizer state in a checkpoint directory


class CheckpointError(RuntimeError):
    """A checkpoint that must not be resumed from; the message names the directory or file."""


@dataclass
class LoadedCheckpoint:
    """What `CheckpointManager.load` restored beyond the model/optimizer (which are loaded in place)."""

    path: Path
    step: int
    scheduler: Any = None
    sampler: Any = None  # this rank's sampler state
    extra: dict = field(default_factory=dict)
    rank_extra: dict = field(default_factory=dict)  # this rank's extra state (e.g. the collator's generator)
    manifest: dict = field(default_factory=dict)


# ---- RNG ------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- files ----------------------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(directory: Path) -> None:
    """fsync every file and directory under `directory` so a rename can never expose unwritten data."""
    for path in sorted(directory.rglob("*")) + [directory]:
        flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _state_dict_of(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def read_manifest(path: Path) -> dict:
    """The manifest of checkpoint directory `path`; raises CheckpointError naming the file when unusable."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing manifest; the checkpoint is incomplete or corrupt "
                              "(delete the directory or resume from an older one)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({err})") from err
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("step"), int):
        raise CheckpointError(f"{manifest_path}: not a {FORMAT} manifest (format={manifest.get('format')!r})")
    return manifest


def verify_checkpoint(path: str | Path) -> dict:
    """Check every file listed in the manifest against its sha256; return the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {path / MANIFEST} but missing; refusing this checkpoint")
        actual = sha256_file(file)
        if actual != expected:
            raise CheckpointError(f"{file}: checksum mismatch (sha256 {actual[:12]}..., manifest says "
                                  f"{expected[:12]}...); the checkpoint is corrupt, refusing to resume from it")
    return manifest


# ---- the manager ----------------------------------------------------------------------------------------
class CheckpointManager:
    """Save / find / load checkpoints under one run directory, keeping the newest `keep_last`."""

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last: must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    # ---- discovery ----------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every renamed checkpoint, oldest first; a directory without a usable manifest
        raises, because after an atomic rename that can only mean corruption."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if path.is_dir() and path.name.startswith(PREFIX) and ".tmp-" not in path.name:
                found.append((read_manifest(path)["step"], path))
        return sorted(found)

    def latest_complete(self, verify: bool = True) -> Path | None:
        """The newest complete checkpoint (by the manifest's step), checksums verified; None if there is none."""
        found = self.complete_checkpoints()
        if not found:
            return None
        path = found[-1][1]
        if verify:
            verify_checkpoint(path)
        return path

    def remove_stale_temporaries(self) -> None:
        """Drop `*.tmp-<pid>` directories left by a process killed mid-save (rank 0, at start-up)."""
        if rank() == 0 and self.directory.is_dir():
            for path in self.directory.glob(f"{PREFIX}*.tmp-*"):
                shutil.rmtree(path, ignore_errors=True)
        barrier()

    # ---- save ---------------------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None, *,
             scheduler: Any = None, sampler: Any = None, extra: dict | None = None, rank_extra: dict | None = None,
             config: Any = None, state_writer: StateIO | None = None) -> Path:
        """Write checkpoint `step` atomically; every rank calls this. Returns the final directory.

        model/optimizer: saved as model.pt / optimizer.pt by rank 0, unless `state_writer` is given (an engine
        that shards state, like DeepSpeed ZeRO, writes its own files on every rank instead).
        scheduler, sampler: objects with `state_dict()` or plain state; sampler and rank_extra are per rank.
        """
        final = self.directory / f"{PREFIX}{step:06d}"
        tmp = self._shared_tmp_name(final)
        if rank() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier()
        if state_writer is not None:
            state_writer(tmp)
        elif rank() == 0:
            if model is not None:
                torch.save(model.state_dict(), tmp / "model.pt")
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"sampler": _state_dict_of(sampler), "rng": rng_state(), "rank_extra": rank_extra or {}},
                   tmp / f"rank-{rank():05d}.pt")
        if rank() == 0:
            torch.save({"step": step, "scheduler": _state_dict_of(scheduler), "extra": extra or {}},
                       tmp / "trainer.pt")
            if config is not None:
                save_config(config, tmp / "config.yaml")
        barrier()  # every rank's files are on disk before rank 0 hashes them
        if rank() == 0:
            self._seal(tmp, final, step)
            self._prune()
        barrier()
        return final

    def _shared_tmp_name(self, final: Path) -> Path:
        # rank 0's pid names the directory; the other ranks learn it so all write into the same place
        names = [f"{final.name}.tmp-{os.getpid()}"]
        if world_size() > 1:
            dist.broadcast_object_list(names, src=0)
        return self.directory / names[0]

    def _seal(self, tmp: Path, final: Path, step: int) -> None:
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "step": step, "world_size": world_size(), "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():  # a re-run of the same step (e.g. resumed and saved again) replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.directory)  # the rename itself is durable

    def _prune(self) -> None:
        found = self.complete_checkpoints()
        for _, path in found[:-self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    # ---- load ---------------------------------------------------------------------------------------
    def load(self, path: str | Path, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
             *, state_reader: StateIO | None = None, restore_rng: bool = True, verify: bool = True,
             map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
        """Restore model/optimizer in place (or through `state_reader`) and this rank's RNG states."""
        path = Path(path)
        manifest = verify_checkpoint(path) if verify else read_manifest(path)
        rank_file = path / f"rank-{rank():05d}.pt"
        if manifest.get("world_size", 1) != world_size():
            raise CheckpointError(f"{path / MANIFEST}: saved with world_size {manifest.get('world_size')}, this run "
                                  f"has {world_size()}; the data position is per rank, so resume with the same size")
        if not rank_file.is_file():
            raise CheckpointError(f"{rank_file}: missing; refusing this checkpoint")
        if state_reader is not None:
            state_reader(path)
        else:
            if model is not None:
                model.load_state_dict(torch.load(path / "model.pt", map_location=map_location, weights_only=True))
            if optimizer is not None:
                optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=map_location,
                                                     weights_only=True))
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        per_rank = torch.load(rank_file, map_location="cpu", weights_only=False)
        if restore_rng:
            set_rng_state(per_rank["rng"])
        if trainer["step"] != manifest["step"]:
            raise CheckpointError(f"{path / 'trainer.pt'}: step {trainer['step']} != manifest step {manifest['step']}")
        return LoadedCheckpoint(path=path, step=manifest["step"], scheduler=trainer["scheduler"],
                                sampler=per_rank["sampler"], extra=trainer["extra"],
                                rank_extra=per_rank["rank_extra"], manifest=manifest)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_checkpoint(value: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint), for `--init-from`."""
    path = Path(value)
    if (path / MANIFEST).is_file():
        verify_checkpoint(path)
        return path
    latest = CheckpointManager(path).latest_complete()
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint (no {MANIFEST}) nor a run directory with checkpoints")
    return latest
