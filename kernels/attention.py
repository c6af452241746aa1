"""Variable-length bidirectional attention on packed sequences, in Triton (FlashAttention-2 algorithm).

    out = triton_varlen_attention(q, k, v, cu_seqlens, max_seqlen)    q, k, v, out: [T, heads, d]

Every sequence b attends only to itself: tokens cu_seqlens[b] .. cu_seqlens[b+1]-1, no causal mask, scale
1/sqrt(d). Head dims up to 128 (32, 64, 128 native; others padded to the next power of two >= 16);
fp16/bf16/fp32 (bf16 and fp16 are the GPU fast paths).

Design
- Forward: online softmax over key blocks; saves the per-row log-sum-exp (log2 units, fp32, [heads, T]).
- Backward (Triton tutorial 06): delta = rowsum(dO * O), then one kernel that owns a key block and loops over
  the query blocks of its sequence (dK, dV), and one that owns a query block and loops over key blocks
  (dQ). Each output element has one writer, so no atomics and the result is deterministic.
- Grid: a flattened list of blocks. Sequence b owns "virtual" blocks starting at cu_seqlens[b] // BLOCK + b.
  These starts are increasing and at least cdiv(len_b, BLOCK) apart, so T // BLOCK + B programs cover every
  block of every sequence with at most one idle program per sequence. A (max_seqlen blocks x B) grid would
  instead idle (max_blocks - blocks_b) programs for every short sequence. Each program finds its sequence
  by counting the virtual starts <= its id (vector loads of cu_seqlens; no host sync, no lookup table).
- Blocks never straddle sequences: the last block of a sequence is masked, full blocks are not.
- Autotune is keyed on next_power_of_2(max_seqlen), never on the exact lengths, so a variable-length corpus
  does not re-tune; the int arguments that change per batch are not specialised, so it does not recompile.
- Offsets of a sequence's first row are 64-bit (T * heads * d can exceed 2^31 at 64k tokens x 12 heads x
  128); offsets inside one sequence stay 32-bit.
"""

from __future__ import annotations

import math
import weakref

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _utils
from ._utils import INTERPRET, SUPPORTED_DTYPES, dot_precision, seqlen_bucket, unit_stride_last, upcast_tiles

MAX_HEAD_DIM = 128  # the tile configs are sized for up to 128 (mGTE: 64); smaller dims are padded to 2^k >= 16
LOG2_E = 1.4426950408889634
# cu_seqlens entries scanned per vector load when a program looks up its sequence; tiny under the interpreter
# so that tests with a few dozen sequences already take the multi-load path
SEARCH_BLOCK = 16 if INTERPRET else 512
# per-batch ints: specialising them (==1, %16) would compile new variants as batches change
_PER_BATCH_ARGS = ["num_seqs", "total_tokens"]


# fp32 is the correctness path, not a speed path: its IEEE dots run on FMA units, and the fp16/bf16 tiles
# below compile to heavily spilling sm_90 code for it (up to 78 s for one config at head dim 128: compiled
# offline with Triton 3.7's ptxas on a loaded 2-core machine). 32 x 32 tiles over 8 warps compiled in 3-5 s
# there, spilling a few KB instead of 100+ KB.
FP32_SHAPE = (32, 32, 8, 1)


def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """fp16/bf16 autotune set + FP32_SHAPE last (`_prune_by_dtype` gives each dtype its part)."""
    if INTERPRET:  # one config: the interpreter would otherwise "benchmark" each one in NumPy
        shapes = shapes[-1:]
    else:
        shapes = [*shapes, FP32_SHAPE]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune_by_dtype(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """fp32 inputs get the one FP32_SHAPE config (last), fp16/bf16 the others. (Only called with > 1 config,
    i.e. not under the interpreter.)"""
    return configs[-1:] if named_args["Q"].dtype == torch.float32 else configs[:-1]


# (BLOCK_M, BLOCK_N, warps, stages). Forward and dQ: a program owns BLOCK_M queries; dK/dV: BLOCK_N keys.
# The last entry is the interpreter's: there the cost is per program and per loop step, not per FLOP.
FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 64, 4, 1)])
DKDV_CONFIGS = _configs([(32, 128, 4, 5), (64, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 3), (64, 64, 4, 1)])
DQ_CONFIGS = _configs([(128, 32, 4, 5), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 1)])
AUTOTUNE_KEY = ["seqlen_bucket", "HEAD_DIM"]  # the autotuner adds the tensors' dtypes itself
PRUNE = {"early_config_prune": _prune_by_dtype}


# ---- shared device helpers ---------------------------------------------------------------------------------
@triton.jit
def _locate_block(cu_seqlens, num_seqs, pid, BLOCK: tl.constexpr, SEARCH_BLOCK: tl.constexpr):
    """Map flattened program id -> (first token of its sequence, sequence length, block index in it)."""
    count = 0
    for first in range(0, num_seqs, SEARCH_BLOCK):
        seq = first + tl.arange(0, SEARCH_BLOCK)
        in_range = seq < num_seqs
        starts = tl.load(cu_seqlens + seq, mask=in_range, other=0)
        virtual_start = starts // BLOCK + seq
        count += tl.sum((in_range & (virtual_start <= pid)).to(tl.int32), axis=0)
    seq_id = count - 1  # virtual_start(0) == 0 <= pid, so seq_id >= 0
    seq_start = tl.load(cu_seqlens + seq_id)
    seq_end = tl.load(cu_seqlens + seq_id + 1)
    block = pid - (seq_start // BLOCK + seq_id)
    return seq_start, seq_end - seq_start, block


@triton.jit
def _load_rows(base, rows, stride, seqlen, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, MASK: tl.constexpr,
               UPCAST: tl.constexpr):
    """[len(rows), HEAD_PAD] tile of one head; rows past the sequence end (when MASK) and feature columns past
    HEAD_DIM read as 0, so padded columns add nothing to any dot product."""
    cols = tl.arange(0, HEAD_PAD)
    ptrs = base + rows[:, None] * stride + cols[None, :]
    if MASK:
        tile = tl.load(ptrs, mask=(rows < seqlen)[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
    elif HEAD_DIM != HEAD_PAD:
        tile = tl.load(ptrs, mask=(cols < HEAD_DIM)[None, :], other=0.0)
    else:
        tile = tl.load(ptrs)
    if UPCAST:
        tile = tile.to(tl.float32)
    return tile


# ---- forward ----------------------------------------------------------------------------------------------
@triton.jit
def _fwd_inner(acc, row_sum, row_max, q, k_base, v_base, stride_kt, stride_vt, start_n, seqlen, qk_scale,
               BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, MASK: tl.constexpr,
               UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    cols = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, cols, stride_kt, seqlen, HEAD_DIM, HEAD_PAD, MASK, UPCAST)  # [BN, d]
    v = _load_rows(v_base, cols, stride_vt, seqlen, HEAD_DIM, HEAD_PAD, MASK, UPCAST)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BM, BN], log2 units
    if MASK:
        scores = tl.where((cols < seqlen)[None, :], scores, float("-inf"))
    # every key block holds >= 1 valid key, so new_max is finite and no row ever sees exp2(-inf - -inf)
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    probs = tl.math.exp2(scores - new_max[:, None])
    rescale = tl.math.exp2(row_max - new_max)
    row_sum = row_sum * rescale + tl.sum(probs, axis=1)
    acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, row_sum, new_max


@triton.autotune(configs=FWD_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by=PRUNE)
@triton.jit(do_not_specialize=_PER_BATCH_ARGS)
def _attn_fwd_kernel(Q, K, V, OUT, LSE, cu_seqlens, num_seqs, total_tokens, seqlen_bucket, qk_scale,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                     HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, UPCAST: tl.constexpr,
                     DOT_PRECISION: tl.constexpr,
                     SEARCH_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    seq_start, seqlen, block = _locate_block(cu_seqlens, num_seqs, tl.program_id(0), BLOCK_M, SEARCH_BLOCK)
    if block * BLOCK_M >= seqlen:  # the spare program after a sequence whose blocks fit exactly
        return
    head = tl.program_id(1)
    first_row = seq_start.to(tl.int64)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(Q + first_row * stride_qt + head * stride_qh, rows, stride_qt, seqlen, HEAD_DIM, HEAD_PAD,
                   True, UPCAST)
    k_base = K + first_row * stride_kt + head * stride_kh
    v_base = V + first_row * stride_vt + head * stride_vh

    acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    full_end = (seqlen // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        acc, row_sum, row_max = _fwd_inner(acc, row_sum, row_max, q, k_base, v_base, stride_kt, stride_vt,
                                           start_n, seqlen, qk_scale, BLOCK_N, HEAD_DIM, HEAD_PAD, False, UPCAST,
                                           DOT_PRECISION)
    if full_end < seqlen:
        acc, row_sum, row_max = _fwd_inner(acc, row_sum, row_max, q, k_base, v_base, stride_kt, stride_vt,
                                           full_end, seqlen, qk_scale, BLOCK_N, HEAD_DIM, HEAD_PAD, True, UPCAST,
                                           DOT_PRECISION)

    in_seq = rows < seqlen
    out = acc / row_sum[:, None]
    o_ptrs = OUT + first_row * stride_ot + head * stride_oh + rows[:, None] * stride_ot
    cols = tl.arange(0, HEAD_PAD)
    tl.store(o_ptrs + cols[None, :], out.to(OUT.dtype.element_ty), mask=in_seq[:, None] & (cols < HEAD_DIM)[None, :])
    lse_ptrs = LSE + head.to(tl.int64) * total_tokens + first_row + rows
    tl.store(lse_ptrs, row_max + tl.math.log2(row_sum), mask=in_seq)


# ---- backward ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_delta_kernel(OUT, DO, DELTA, total_tokens, stride_ot, stride_oh, stride_dot, stride_doh,
                      HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """delta[h, t] = sum_d dO[t, h, d] * O[t, h, d]: the softmax-backward row term, computed once."""
    head = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    cols = tl.arange(0, HEAD_PAD)[None, :]
    mask = (rows < total_tokens)[:, None] & (cols < HEAD_DIM)
    o = tl.load(OUT + rows[:, None] * stride_ot + head * stride_oh + cols, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * stride_dot + head * stride_doh + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + head.to(tl.int64) * total_tokens + rows, tl.sum(o * do, axis=1), mask=rows < total_tokens)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, start_m, seqlen,
                qk_scale, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, MASK: tl.constexpr,
                UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    rows = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(q_base, rows, stride_qt, seqlen, HEAD_DIM, HEAD_PAD, MASK, UPCAST)  # [BM, d]
    do = _load_rows(do_base, rows, stride_dot, seqlen, HEAD_DIM, HEAD_PAD, MASK, UPCAST)
    if MASK:  # lse = +inf makes the probabilities of rows past the end exactly 0
        lse = tl.load(lse_base + rows, mask=rows < seqlen, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=rows < seqlen, other=0.0)
    else:
        lse = tl.load(lse_base + rows)
        delta = tl.load(delta_base + rows)
    # transposed problem: this program's keys are the rows, the loop's queries the columns
    probs_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale - lse[None, :])
    dv += tl.dot(probs_t.to(do.dtype), do, input_precision=DOT_PRECISION)  # [BN, d]
    dprobs_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BN, BM]
    dscores_t = probs_t * (dprobs_t - delta[None, :])
    dk += tl.dot(dscores_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=DKDV_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by=PRUNE)
@triton.jit(do_not_specialize=_PER_BATCH_ARGS)
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, cu_seqlens, num_seqs, total_tokens, seqlen_bucket,
                          qk_scale, sm_scale, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                          stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                          HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, UPCAST: tl.constexpr,
                     DOT_PRECISION: tl.constexpr,
                          SEARCH_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    seq_start, seqlen, block = _locate_block(cu_seqlens, num_seqs, tl.program_id(0), BLOCK_N, SEARCH_BLOCK)
    if block * BLOCK_N >= seqlen:
        return
    head = tl.program_id(1)
    first_row = seq_start.to(tl.int64)
    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(K + first_row * stride_kt + head * stride_kh, rows, stride_kt, seqlen, HEAD_DIM, HEAD_PAD,
                   True, UPCAST)
    v = _load_rows(V + first_row * stride_vt + head * stride_vh, rows, stride_vt, seqlen, HEAD_DIM, HEAD_PAD,
                   True, UPCAST)
    q_base = Q + first_row * stride_qt + head * stride_qh
    do_base = DO + first_row * stride_dot + head * stride_doh
    lse_base = LSE + head.to(tl.int64) * total_tokens + first_row
    delta_base = DELTA + head.to(tl.int64) * total_tokens + first_row

    dk = tl.zeros([BLOCK_N, HEAD_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_PAD], dtype=tl.float32)
    full_end = (seqlen // BLOCK_M) * BLOCK_M
    for start_m in range(0, full_end, BLOCK_M):
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                             start_m, seqlen, qk_scale, BLOCK_M, HEAD_DIM, HEAD_PAD, False, UPCAST, DOT_PRECISION)
    if full_end < seqlen:
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                             full_end, seqlen, qk_scale, BLOCK_M, HEAD_DIM, HEAD_PAD, True, UPCAST, DOT_PRECISION)

    cols = tl.arange(0, HEAD_PAD)[None, :]
    in_seq = (rows < seqlen)[:, None] & (cols < HEAD_DIM)
    dk_ptrs = DK + first_row * stride_dkt + head * stride_dkh + rows[:, None] * stride_dkt + cols
    dv_ptrs = DV + first_row * stride_dvt + head * stride_dvh + rows[:, None] * stride_dvt + cols
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=in_seq)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=in_seq)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, start_n, seqlen, qk_scale,
              BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, MASK: tl.constexpr,
              UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    cols = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, cols, stride_kt, seqlen, HEAD_DIM, HEAD_PAD, MASK, UPCAST)  # [BN, d]
    v = _load_rows(v_base, cols, stride_vt, seqlen, HEAD_DIM, HEAD_PAD, MASK, UPCAST)
    probs = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale - lse[:, None])
    if MASK:
        probs = tl.where((cols < seqlen)[None, :], probs, 0.0)
    dprobs = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # [BM, BN]
    dscores = probs * (dprobs - delta[:, None])
    dq += tl.dot(dscores.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=DQ_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by=PRUNE)
@triton.jit(do_not_specialize=_PER_BATCH_ARGS)
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, cu_seqlens, num_seqs, total_tokens, seqlen_bucket,
                        qk_scale, sm_scale, stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                        stride_dot, stride_doh, stride_dqt, stride_dqh,
                        HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, UPCAST: tl.constexpr,
                     DOT_PRECISION: tl.constexpr,
                        SEARCH_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    seq_start, seqlen, block = _locate_block(cu_seqlens, num_seqs, tl.program_id(0), BLOCK_M, SEARCH_BLOCK)
    if block * BLOCK_M >= seqlen:
        return
    head = tl.program_id(1)
    first_row = seq_start.to(tl.int64)
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    in_seq = rows < seqlen
    q = _load_rows(Q + first_row * stride_qt + head * stride_qh, rows, stride_qt, seqlen, HEAD_DIM, HEAD_PAD,
                   True, UPCAST)
    do = _load_rows(DO + first_row * stride_dot + head * stride_doh, rows, stride_dot, seqlen, HEAD_DIM, HEAD_PAD, True,
                    UPCAST)
    lse = tl.load(LSE + head.to(tl.int64) * total_tokens + first_row + rows, mask=in_seq, other=float("inf"))
    delta = tl.load(DELTA + head.to(tl.int64) * total_tokens + first_row + rows, mask=in_seq, other=0.0)
    k_base = K + first_row * stride_kt + head * stride_kh
    v_base = V + first_row * stride_vt + head * stride_vh

    dq = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
    full_end = (seqlen // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, start_n, seqlen, qk_scale,
                       BLOCK_N, HEAD_DIM, HEAD_PAD, False, UPCAST, DOT_PRECISION)
    if full_end < seqlen:
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, full_end, seqlen, qk_scale,
                       BLOCK_N, HEAD_DIM, HEAD_PAD, True, UPCAST, DOT_PRECISION)

    dq_ptrs = DQ + first_row * stride_dqt + head * stride_dqh + rows[:, None] * stride_dqt
    cols = tl.arange(0, HEAD_PAD)
    tl.store(dq_ptrs + cols[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=in_seq[:, None] & (cols < HEAD_DIM)[None, :])


# ---- launch -----------------------------------------------------------------------------------------------
def _flat_grid(total_tokens: int, num_seqs: int, heads: int, block_arg: str):
    # T // BLOCK + B programs cover all blocks (see the module docstring); heads on the second axis
    return lambda meta: (total_tokens // meta[block_arg] + num_seqs, heads)


def _head_pad(head_dim: int) -> int:
    # tl.arange needs a power of two and tl.dot an inner size >= 16
    return max(16, triton.next_power_of_2(head_dim))


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> None:
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v: expected equal [T, heads, head_dim] shapes, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not 0 < q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim: {q.shape[-1]} is not supported by the Triton kernel (at most {MAX_HEAD_DIM})")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v: expected one dtype of {SUPPORTED_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected a [B+1] int32 tensor, got {cu_seqlens.dtype} of shape "
                         f"{tuple(cu_seqlens.shape)}")
    if not cu_seqlens.is_contiguous():  # the kernels read it with unit stride
        raise ValueError(f"cu_seqlens: expected a contiguous tensor, got stride {cu_seqlens.stride()}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens: on {cu_seqlens.device}, but q is on {q.device}")
    _check_offsets(cu_seqlens, q.shape[0])


# (weak reference, version counter) of the last cu_seqlens whose values passed _check_offsets
_LAST_CHECKED_OFFSETS: tuple[weakref.ref, int | None] | None = None


def _check_offsets(cu_seqlens: Tensor, total_tokens: int) -> None:
    """cu_seqlens starts at 0, never decreases (empty sequences are fine) and ends at T: what the block lookup
    assumes. Reading the values costs a host sync on CUDA, so it is done once per offsets tensor: the model
    hands one batch's cu_seqlens to every layer (and to recomputation under checkpointing); a tensor changed
    in place since (its version counter moved) is checked again."""
    global _LAST_CHECKED_OFFSETS
    version = None if cu_seqlens.is_inference() else cu_seqlens._version  # inference tensors have no counter
    last = _LAST_CHECKED_OFFSETS
    if last is not None and last[0]() is cu_seqlens and last[1] == version:
        return
    first, decreasing, final = torch.stack([cu_seqlens[0], (cu_seqlens[1:] < cu_seqlens[:-1]).sum().to(torch.int32),
                                            cu_seqlens[-1]]).tolist()
    if first != 0:
        raise ValueError(f"cu_seqlens: must start at 0, starts at {first}")
    if decreasing:
        raise ValueError(f"cu_seqlens: must be non-decreasing, decreases at {decreasing} position(s)")
    if final != total_tokens:
        raise ValueError(f"cu_seqlens: ends at {final}, but q, k, v hold {total_tokens} tokens")
    _LAST_CHECKED_OFFSETS = (weakref.ref(cu_seqlens), version)


def _forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    total_tokens, heads, head_dim = q.shape
    num_seqs = cu_seqlens.numel() - 1
    out = _utils.empty((total_tokens, heads, head_dim), q.dtype, q.device)
    lse = _utils.empty((heads, total_tokens), torch.float32, q.device)  # log2 units
    _attn_fwd_kernel[_flat_grid(total_tokens, num_seqs, heads, "BLOCK_M")](
        q, k, v, out, lse, cu_seqlens, num_seqs, total_tokens, seqlen_bucket(max_seqlen),
        LOG2_E / math.sqrt(head_dim),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, HEAD_PAD=_head_pad(head_dim), UPCAST=upcast_tiles(q.dtype),
        DOT_PRECISION=dot_precision(q.dtype), SEARCH_BLOCK=SEARCH_BLOCK)
    return out, lse


def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu_seqlens: Tensor,
              max_seqlen: int) -> tuple[Tensor, Tensor, Tensor]:
    total_tokens, heads, head_dim = q.shape
    num_seqs = cu_seqlens.numel() - 1
    sm_scale = 1.0 / math.sqrt(head_dim)
    bucket = seqlen_bucket(max_seqlen)
    common = dict(HEAD_DIM=head_dim, HEAD_PAD=_head_pad(head_dim), UPCAST=upcast_tiles(q.dtype),
                  DOT_PRECISION=dot_precision(q.dtype), SEARCH_BLOCK=SEARCH_BLOCK)

    delta = _utils.empty(tuple(lse.shape), torch.float32, q.device)  # [heads, T]
    block_t = 64
    _bwd_delta_kernel[(triton.cdiv(total_tokens, block_t), heads)](
        out, dout, delta, total_tokens, out.stride(0), out.stride(1), dout.stride(0), dout.stride(1),
        HEAD_DIM=head_dim, HEAD_PAD=_head_pad(head_dim), BLOCK_T=block_t)

    dq, dk, dv = (_utils.empty((total_tokens, heads, head_dim), q.dtype, q.device) for _ in range(3))
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               dout.stride(0), dout.stride(1))
    _attn_bwd_dkdv_kernel[_flat_grid(total_tokens, num_seqs, heads, "BLOCK_N")](
        q, k, v, dout, lse, delta, dk, dv, cu_seqlens, num_seqs, total_tokens, bucket,
        sm_scale * LOG2_E, sm_scale, *strides, dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), **common)
    _attn_bwd_dq_kernel[_flat_grid(total_tokens, num_seqs, heads, "BLOCK_M")](
        q, k, v, dout, lse, delta, dq, cu_seqlens, num_seqs, total_tokens, bucket,
        sm_scale * LOG2_E, sm_scale, *strides, dq.stride(0), dq.stride(1), **common)
    return dq, dk, dv


class VarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
        q, k, v = (unit_stride_last(x) for x in (q, k, v))
        out, lse = _forward(q, k, v, cu_seqlens, max_seqlen)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.max_seqlen = max_seqlen
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = _backward(unit_stride_last(dout), q, k, v, out, lse, cu_seqlens, ctx.max_seqlen)
        return dq, dk, dv, None, None


def triton_varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """Packed bidirectional attention. q, k, v `[T, heads, d]` (any token/head strides, e.g. views of one
    packed qkv `[T, 3, heads, d]`), cu_seqlens `[B+1]` int32 on the same device, max_seqlen = longest
    sequence (only buckets the autotuner; never read on the device). Returns a new contiguous
    `[T, heads, d]` in q's dtype. Differentiable in q, k and v."""
    _check_inputs(q, k, v, cu_seqlens)
    return VarlenAttention.apply(q, k, v, cu_seqlens, max_seqlen)
