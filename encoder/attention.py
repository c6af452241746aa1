"""Attention backends behind one registry.

Every backend computes bidirectional (non-causal) softmax attention over packed sequences with the one
signature

    fn(q, k, v, cu_seqlens, max_seqlen) -> out          q, k, v, out: [T, heads, head_dim]

scaled by 1/sqrt(head_dim), with blocks never crossing sequence boundaries. Import guards for optional
attention packages live here: a backend whose package is missing is simply unavailable.

`auto` picks, on CUDA: our Triton kernels once `make gpu-check` has recorded a pass for this device and Triton
version (kernel_switches.triton_verified), else flash-attn, else xformers when importable, else PyTorch SDPA
(sequences of one length per call); on CPU: SDPA. A backend named explicitly is used as named.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .kernel_switches import reference_attention, triton_interpreter, triton_verified

AttentionFn = Callable[[Tensor, Tensor, Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class Backend:
    name: str
    load: Callable[[], AttentionFn]  # imports lazily; raises ImportError when the package is missing
    devices: tuple[str, ...]  # device types it runs on


_REGISTRY: dict[str, Backend] = {}
_LOADED: dict[str, AttentionFn] = {}
# auto picks the first available backend on the device from this order (triton only where verified)
AUTO_ORDER = ("triton", "flash", "xformers", "sdpa")


def register_backend(name: str, load: Callable[[], AttentionFn], devices: tuple[str, ...]) -> None:
    _REGISTRY[name] = Backend(name, load, devices)
    _LOADED.pop(name, None)


def registered_backends() -> list[str]:
    return list(_REGISTRY)


def _try_load(name: str) -> AttentionFn | None:
    if name in _LOADED:
        return _LOADED[name]
    try:
        fn = _REGISTRY[name].load()
    except ImportError:
        return None
    _LOADED[name] = fn
    return fn


def is_available(name: str, device: torch.device | str) -> bool:
    backend = _REGISTRY.get(name)
    if backend is None:
        return False
    device_type = torch.device(device).type
    devices = backend.devices + (("cpu",) if name == "triton" and triton_interpreter() else ())
    return device_type in devices and _try_load(name) is not None


def available_backends(device: torch.device | str) -> list[str]:
    return [name for name in _REGISTRY if is_available(name, device)]


def resolve_backend_name(name: str, device: torch.device | str) -> str:
    """Turn `auto` into a concrete backend for `device`; validate explicit names."""
    if name == "auto":
        device_type = torch.device(device).type
        for candidate in AUTO_ORDER:
            # the Triton interpreter can run on the CPU, but it is a test vehicle, never a default there
            if device_type == "cpu" and candidate != "sdpa":
                continue
            if not is_available(candidate, device):
                continue
            # no GPU had run our kernels when they were written: only once gpu-check passed on this device
            if candidate != "triton" or triton_verified(device):
                return candidate
        return "reference"
    if name not in _REGISTRY:
        raise ValueError(f"attention_backend: unknown backend {name!r}; registered: {sorted(_REGISTRY)} or 'auto'")
    if not is_available(name, device):
        raise ValueError(f"attention_backend: {name!r} is not available on {torch.device(device).type} "
                         f"(available there: {available_backends(device)})")
    return name


def get_backend(name: str, device: torch.device | str) -> AttentionFn:
    fn = _try_load(resolve_backend_name(name, device))
    assert fn is not None
    return fn


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                     backend: str = "auto") -> Tensor:
    return get_backend(backend, q.device)(q, k, v, cu_seqlens, max_seqlen)


# ---- sdpa: PyTorch's fused attention, sequences of one length per call (no padding computed) --------------
def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    lengths = _lengths(cu_seqlens)
    if len(lengths) == 1:
        return _sdpa_same_length(q, k, v, 1)
    # Sequences of equal length share one call (length-bucketed batches make that common). Tokens are
    # permuted once so each group is a contiguous run, the runs go through torch.split / torch.cat, and the
    # permutation is undone once: forward and backward stay O(T), whatever the number of groups.
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    perm = None
    if order != list(range(len(lengths))):
        perm = torch.from_numpy(np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order])).to(q.device)
        q, k, v = q[perm], k[perm], v[perm]
    groups = [(n, len(list(run))) for n, run in itertools.groupby(lengths[i] for i in order)]
    sizes = [n * count for n, count in groups]
    outputs = [_sdpa_same_length(qg, kg, vg, count)
               for (_, count), qg, kg, vg in zip(groups, q.split(sizes), k.split(sizes), v.split(sizes))]
    out = torch.cat(outputs, dim=0)
    if perm is not None:
        out = out[torch.argsort(perm)]
    return out


def _sdpa_same_length(q: Tensor, k: Tensor, v: Tensor, count: int) -> Tensor:
    """`count` packed sequences of one length `[count * n, heads, d]` through one SDPA call.

    SDPA wants 4-D `[batch, heads, n, d]`: with 3-D input the CPU dispatcher takes the math path, which
    materialises the `[heads, n, n]` scores (gigabytes at 8192 tokens) instead of the fused kernel.
    """
    shape = (count, q.shape[0] // count, *q.shape[1:])  # [S, n, heads, d]
    qb, kb, vb = (x.reshape(shape).transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(qb, kb, vb).transpose(1, 2).reshape(q.shape)


def first_token_attention(q_first: Tensor, k: Tensor, v: Tensor, sequence_index: Tensor) -> Tensor:
    """Attention of one query per sequence (its first token) over that sequence's keys, in O(T).

    q_first `[B, heads, d]`; k, v `[T, heads, d]`; sequence_index `[T]` -> `[B, heads, d]`. A segment softmax
    over the packed row, float32 accumulation; used for CLS-only outputs of the last layer.
    """
    scale = 1.0 / math.sqrt(q_first.shape[-1])
    acc = torch.promote_types(q_first.dtype, torch.float32)  # at least float32 accumulation
    scores = (k.to(acc) * q_first.to(acc)[sequence_index]).sum(-1) * scale  # [T, heads]
    batch_size, heads = q_first.shape[0], q_first.shape[1]
    index = sequence_index[:, None].expand(-1, heads)
    row_max = scores.new_full((batch_size, heads), float("-inf")).scatter_reduce(0, index, scores, reduce="amax")
    weights = torch.exp(scores - row_max[sequence_index])  # [T, heads]
    denominator = scores.new_zeros(batch_size, heads).index_add_(0, sequence_index, weights)
    weighted = weights[..., None] * v.to(acc)  # [T, heads, d]
    out = v.new_zeros(batch_size, *v.shape[1:], dtype=acc).index_add_(0, sequence_index, weighted)
    return (out / denominator[..., None]).to(q_first.dtype)


# ---- optional GPU backends (import-guarded) ---------------------------------------------------------------
def _load_flash() -> AttentionFn:
    from flash_attn import flash_attn_varlen_func  # noqa: PLC0415  (optional dependency)

    def flash_attention(q, k, v, cu_seqlens, max_seqlen):
        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=False)

    return flash_attention


def _load_xformers() -> AttentionFn:
    import xformers.ops as xops  # noqa: PLC0415  (optional dependency)
    from xformers.ops.fmha.attn_bias import BlockDiagonalMask  # noqa: PLC0415

    def xformers_attention(q, k, v, cu_seqlens, max_seqlen):
        # device= matters: without it the mask is built on the CPU (a known mGTE bug)
        bias = BlockDiagonalMask.from_seqlens(_lengths(cu_seqlens), device=q.device)
        return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0]

    return xformers_attention


def _lengths(cu_seqlens: Tensor) -> list[int]:
    """Per-sequence lengths on the host (one device sync per call on CUDA)."""
    offsets = cu_seqlens.tolist()
    return [e - s for s, e in zip(offsets[:-1], offsets[1:])]


def _load_triton() -> AttentionFn:
    from kernels.attention import triton_varlen_attention  # noqa: PLC0415  (needs triton)

    return triton_varlen_attention


register_backend("reference", lambda: reference_attention, devices=("cpu", "cuda"))
register_backend("sdpa", lambda: sdpa_attention, devices=("cpu", "cuda"))
# ...and on CPU tensors under TRITON_INTERPRET=1 (see is_available)
register_backend("triton", _load_triton, devices=("cuda",))
register_backend("flash", _load_flash, devices=("cuda",))
register_backend("xformers", _load_xformers, devices=("cuda",))
