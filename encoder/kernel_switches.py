"""When the encoder runs our Triton kernels (kernels/), and the PyTorch definitions it shares with them.

Switches:
- `use_triton_kernel(impl, x)` decides `rope_impl` / `glu_impl` (auto | torch | triton) for a tensor.
- `triton_interpreter()`: Triton's CPU interpreter is on (TRITON_INTERPRET=1); a test vehicle, never a default.
- `triton_kernels_importable()`: the one import guard for kernels/.
- `triton_verified(device)`: `make gpu-check` (scripts/gpu_check.py) recorded a pass of the kernel tests on
  this CUDA device (name, compute capability) with the installed Triton. Until it has, `auto` keeps to
  backends known good on CUDA (flash-attn, xformers, PyTorch SDPA; torch RoPE and GLU): no GPU had run our
  kernels when they were written. The record is a small JSON file, `gpu_check_record_path()`.

Shared definitions (`ACTIVATIONS`, `rotate_half`, `reference_attention`) live in kernels/reference.py and
are re-exported here, so the other encoder modules import them relatively from this one place.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

# An export pastes kernels/reference.py into the same single file above this module (encoder/export/bundle.py),
# so there the names already exist and the import (which the bundle rewrites) is skipped.
if "reference_attention" not in globals():
    from kernels.reference import ACTIVATIONS, reference_attention, rotate_half  # noqa: F401

RECORD_ENV = "LONGENC_GPU_CHECK_RECORD"  # path of the pass record; default under the user cache
RECORD_FORMAT = 1


def triton_interpreter() -> bool:
    """Triton's interpreter runs kernels on CPU tensors: how CI tests them. Read at call time, so the order
    in which modules and test fixtures set TRITON_INTERPRET does not matter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


_TRITON_KERNELS: bool | None = None


def triton_kernels_importable() -> bool:
    """Whether our Triton kernels (kernels/) import here: the one import guard for them."""
    global _TRITON_KERNELS
    if _TRITON_KERNELS is None:
        try:
            import kernels.geglu  # noqa: F401, PLC0415
            import kernels.rope  # noqa: F401, PLC0415

            _TRITON_KERNELS = True
        except ImportError:
            _TRITON_KERNELS = False
    return _TRITON_KERNELS


def use_triton_kernel(impl: str, x: Tensor) -> bool:
    """Decide `impl` (auto | torch | triton) for a fused elementwise kernel on tensor `x`.

    auto = Triton on a CUDA device that `make gpu-check` has verified; on CPU the interpreter is a test
    vehicle, never a default."""
    if impl == "torch":
        return False
    if impl == "triton":
        if not (x.is_cuda or triton_interpreter()):
            raise ValueError("triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 for the CPU interpreter)")
        return True
    return x.is_cuda and triton_kernels_importable() and triton_verified(x.device)


# ---- the gpu-check pass record -----------------------------------------------------------------------------
def gpu_check_record_path() -> Path:
    """`$LONGENC_GPU_CHECK_RECORD`, else `$XDG_CACHE_HOME/longenc/gpu_check.json` (default ~/.cache)."""
    if os.environ.get(RECORD_ENV):
        return Path(os.environ[RECORD_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "longenc" / "gpu_check.json"


def device_key(device: torch.device | str) -> str:
    """What a pass is recorded for: the CUDA device's name and compute capability, and the Triton version
    (another compiler may generate other code)."""
    import triton  # noqa: PLC0415  (only asked once the Triton backend imported)

    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor}), triton {triton.__version__}"


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        warnings.warn(f"{path}: unreadable gpu-check record ({err}); treating the Triton kernels as unverified",
                      stacklevel=3)
        return {}
    passes = record.get("passes") if isinstance(record, dict) else None
    if not isinstance(passes, dict):
        warnings.warn(f"{path}: no 'passes' table in the gpu-check record; treating the Triton kernels as "
                      "unverified", stacklevel=3)
        return {}
    return passes


_VERIFIED: dict[tuple[str, str], bool] = {}  # (record path, device key) -> recorded; read once per process


def triton_verified(device: torch.device | str) -> bool:
    """Whether the record holds a gpu-check pass for this CUDA device and Triton version."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    path, key = str(gpu_check_record_path()), device_key(device)
    if (path, key) not in _VERIFIED:
        _VERIFIED[(path, key)] = key in _read_record(Path(path))
    return _VERIFIED[(path, key)]


def record_gpu_check_pass(key: str, details: dict, path: Path | None = None) -> Path:
    """Add (or replace) the pass of `key` in the record, atomically; returns the record's path."""
    path = path or gpu_check_record_path()
    passes = _read_record(path) if path.exists() else {}
    passes[key] = {"recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": RECORD_FORMAT, "passes": passes}, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    _VERIFIED.clear()
    return path
