"""Filesystem helpers of the exporters: never leave a half-written directory behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


@contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir` to fill; on success it replaces `out_dir` by renames.

    On any error the temporary directory is removed and an existing `out_dir` is left untouched. The old directory
    is moved aside (not deleted) before the final rename so that a crash between the two renames loses nothing.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass --overwrite / overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tensors(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors needs contiguous, unshared CPU tensors; `format: pt` is what transformers checks for."""
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link large identical files (a second view of the same weights costs no disk), copy where impossible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_tree(source: Path, target: Path, skip: Callable[[Path], bool] = lambda p: False) -> None:
    for path in source.rglob("*"):
        if path.is_file() and not skip(path.relative_to(source)):
            link_or_copy(path, target / path.relative_to(source))
