"""A Python process that has the project's dependencies but cannot import the project itself.

The editable install puts a finder for `encoder`, `kernels`, ... into site-packages through a `.pth` file, so
a plain subprocess of this interpreter can import the repository from anywhere. `-S` skips the `site` module
(and with it every `.pth` file); site-packages comes back through PYTHONPATH, which adds the directories
without running their `.pth` hooks. What is left is what a user who installed only our dependencies has.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path


def isolated_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=os.pathsep.join(site.getsitepackages()), PYTHONNOUSERSITE="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra or {})
    return env


def run_isolated(args: list[str], cwd: Path, timeout: int, extra_env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess:
    """Run `python -S *args` (a script path or `-c CODE`) from `cwd` without the repository importable."""
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=isolated_env(extra_env),
                          capture_output=True, text=True, timeout=timeout)
