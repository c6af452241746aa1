"""Atomic, verifiable training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a *sealed directory*: written in full under a temporary name, then renamed:

    ckpt-000123.tmp-<pid>/   every file written and fsynced (never read by `latest_complete`)
    ckpt-000123/             after the rename; `manifest.json` (written last) holds the step and the
                             sha256 of every other file, so a torn or edited checkpoint is detected
      manifest.json          {"format": ..., "step": 123, "files": {"model.pt": "<sha256>", ...}, "world_size": W}
      model.pt / optimizer.pt (or whatever the engine's `state_writer` writes, e.g. deepspeed/)
      trainer.pt             step, scheduler state, extra (rank 0)
      rank-00000.pt ...      per rank: sampler state, python/numpy/torch RNG states (as tensors), rank_extra
      config.yaml            the run config (optional)

Every `.pt` file holds only tensors and plain containers and is read with `torch.load(weights_only=True)`:
a crafted checkpoint cannot run code on `--resume` (the sha256 manifest cannot prevent that, an attacker
rewrites it too). DeepSpeed's own files (`deepspeed/`) go through DeepSpeed's loader; see launch/README.md.

The step always comes from the manifest, never from the directory name. In a multi-process run every rank
calls `save`/`load` (the directory must be on a filesystem all ranks share); rank 0 writes the shared files,
hashes, seals and prunes. Old checkpoints are pruned by renaming them to a temporary name first, so a kill
mid-delete leaves a `*.tmp-*` directory (cleaned at the next start), never a half-deleted checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import save_config
from .distributed import barrier, broadcast_object, rank, world_size

MANIFEST = "manifest.json"
FORMAT = "longenc-checkpoint/2"  # /1 pickled numpy RNG states (not loadable with weights_only=True)
PREFIX = "ckpt-"
TMP_MARK = ".tmp-"

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


# ---- RNG: states as tensors and plain containers, so they load with weights_only=True --------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states of this process."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(weights_only=True)`; a file that needs more than tensors and plain containers is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain "
                              f"containers (unsafe to unpickle; {str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None


# ---- sealed directories: temporary name -> manifest with sha256 -> rename ------------------------------------
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


def temporary_sibling(final: Path, purpose: str = "") -> Path:
    return final.with_name(f"{final.name}{TMP_MARK}{purpose}{os.getpid()}")


def remove_directory(path: Path) -> None:
    """Rename to a temporary name, then delete: a kill mid-delete never leaves a half-deleted directory
    under the real name (the temporary one is cleaned by the next `remove_stale_temporaries`)."""
    doomed = temporary_sibling(path, "deleting-")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def seal_directory(tmp: Path, final: Path, format: str, **fields: Any) -> dict:
    """Write the manifest (`format`, `fields`, sha256 of every file) into `tmp`, fsync, rename to `final`
    (replacing an existing one). Returns the manifest."""
    files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {"format": format, **fields, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _fsync_tree(tmp)
    if final.exists():  # e.g. a re-run of the same step, or a retrained final/
        remove_directory(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)  # the rename itself is durable
    return manifest


def read_manifest(path: Path, format: str = FORMAT) -> dict:
    """The manifest of sealed directory `path`; raises CheckpointError naming the file when unusable."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing manifest; the directory is incomplete or corrupt, or was "
                              "written by an older version (delete it, or resume from an older checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format or not isinstance(manifest.get("files"),
                                                                                              dict):
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CheckpointError(f"{manifest_path}: not a {format} manifest (format={found!r})")
    if format == FORMAT and not isinstance(manifest.get("step"), int):
        raise CheckpointError(f"{manifest_path}: no integer step")
    return manifest


def verify_directory(path: str | Path, format: str = FORMAT) -> dict:
    """Check every file listed in the manifest against its sha256; return the manifest."""
    path = Path(path)
    manifest = read_manifest(path, format)
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {path / MANIFEST} but missing; refusing {path}")
        actual = sha256_file(file)
        if actual != expected:
            raise CheckpointError(f"{file}: checksum mismatch (sha256 {actual[:12]}..., manifest says "
                                  f"{expected[:12]}...); {path} is corrupt, refusing to load it")
    return manifest


def verify_checkpoint(path: str | Path) -> dict:
    return verify_directory(path, FORMAT)


def verify_on_rank0(path: Path) -> dict:
    """Hash the checkpoint once (rank 0) and share the verdict: at 64 ranks on a shared filesystem every rank
    hashing every file would take minutes before the first collective."""
    verdict: Any = None
    if rank() == 0:
        try:
            verdict = verify_checkpoint(path)
        except CheckpointError as err:
            verdict = err
    verdict = broadcast_object(verdict)
    if isinstance(verdict, Exception):
        raise CheckpointError(str(verdict))
    return verdict


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_dict_of(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


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
        """(step, path) of every renamed checkpoint, oldest first.

        A checkpoint without a usable manifest can only be one whose deletion was interrupted (an older
        version of this code pruned in place) or a corrupt one: older ones are skipped with a warning; the
        newest (by name) is refused, since resuming from an older one would silently drop work."""
        if not self.directory.is_dir():
            return []
        paths = sorted(p for p in self.directory.iterdir()
                       if p.is_dir() and p.name.startswith(PREFIX) and TMP_MARK not in p.name)
        found = []
        for i, path in enumerate(paths):
            try:
                found.append((read_manifest(path)["step"], path))
            except CheckpointError as err:
                if i == len(paths) - 1:
                    raise
                warnings.warn(f"skipping incomplete checkpoint {path} ({err})", RuntimeWarning, stacklevel=2)
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
        """Drop `*.tmp-<pid>` directories left by a process killed mid-save or mid-prune (rank 0, at start-up;
        the caller holds the run directory's lock, so no live writer owns them)."""
        if rank() == 0 and self.directory.is_dir():
            for path in self.directory.glob(f"{PREFIX}*{TMP_MARK}*"):
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
        Everything must be tensors and plain containers (the files load with weights_only=True).
        """
        final = self.directory / f"{PREFIX}{step:06d}"
        tmp = self.directory / broadcast_object(temporary_sibling(final).name)  # rank 0's pid names it
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
            seal_directory(tmp, final, FORMAT, step=step, world_size=world_size())
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        for _, path in self.complete_checkpoints()[:-self.keep_last]:
            remove_directory(path)

    # ---- load ---------------------------------------------------------------------------------------
    def load(self, path: str | Path, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
             *, state_reader: StateIO | None = None, restore_rng: bool = True, verify: bool = True,
             map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
        """Restore model/optimizer in place (or through `state_reader`) and this rank's RNG states."""
        path = Path(path)
        manifest = verify_on_rank0(path) if verify else read_manifest(path)
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
                model.load_state_dict(load_state_file(path / "model.pt", map_location))
            if optimizer is not None:
                optimizer.load_state_dict(load_state_file(path / "optimizer.pt", map_location))
        trainer = load_state_file(path / "trainer.pt")
        per_rank = load_state_file(rank_file)
        if restore_rng:
            set_rng_state(per_rank["rng"])
        if trainer["step"] != manifest["step"]:
            raise CheckpointError(f"{path / 'trainer.pt'}: step {trainer['step']} != manifest step {manifest['step']}")
        return LoadedCheckpoint(path=path, step=manifest["step"], scheduler=trainer["scheduler"],
                                sampler=per_rank["sampler"], extra=trainer["extra"],
                                rank_extra=per_rank["rank_extra"], manifest=manifest)


def resolve_checkpoint(value: str | Path, verify: bool = True) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint), for `--init-from`."""
    path = Path(value)
    if (path / MANIFEST).is_file():
        if verify:
            verify_checkpoint(path)
        return path
    latest = CheckpointManager(path).latest_complete(verify=verify)
    if latest is None:
        raise CheckpointError(f"{path}: neither a checkpoint (no {MANIFEST}) nor a run directory with checkpoints")
    return latest
