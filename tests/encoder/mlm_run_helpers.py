"""Helpers for the MLM trainer tests: a small, fast config and subprocess launches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny_mlm_stage1.yaml")


def overrides(data: dict, run_dir: Path, **extra: object) -> list[str]:
    """The tiny preset on the test shards, sized to run a step in well under a second on one core."""
    values = {"data.shards": data["shards"], "model.vocab_size": data["vocab_size"], "checkpoint.dir": run_dir,
              "data.max_tokens": 1024, "train.grad_accum": 2, "log.progress": False, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def env(threads: int = 1) -> dict[str, str]:
    # one thread: bitwise reproducible CPU math across processes, and fair on a shared 2-core machine
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu",
            "TOKENIZERS_PARALLELISM": "false"}


def trainer_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "encoder.train_mlm", "--config", CONFIG, *args]


def run_trainer(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_command(args), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
