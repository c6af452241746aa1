"""The unpadded batch: every token of every sequence packed into one `[T]` row.

This is the one place where `cu_seqlens` is derived. Everything downstream (embedding, every layer,
attention backends, heads, losses) takes an `UnpaddedBatch` and hidden states `[T, H]`; padding exists
only at the user-facing boundary (`unpad` on the way in, `pad` on the way out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from torch import Tensor

IGNORE_INDEX = -100  # label value of tokens that carry no MLM target


def cu_seqlens_from_lengths(lengths: Tensor | Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Cumulative sequence offsets `[B+1]` (int32, starts at 0) from per-sequence lengths."""
    lengths = torch.as_tensor(lengths, dtype=torch.int32, device=device)
    return torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def position_ids_from_cu_seqlens(cu_seqlens: Tensor, total: int) -> Tensor:
    """Positions restarting at 0 for every sequence, `[T]` int64, without a per-sequence loop."""
    starts = cu_seqlens[:-1].long()
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths,
                                           output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts[seq_of_token]


@dataclass(frozen=True)
class UnpaddedBatch:
    """B sequences packed into T tokens.

    input_ids     [T]   int64 token ids, sequence after sequence
    position_ids  [T]   int64, restarting at 0 for each sequence
    cu_seqlens    [B+1] int32 offsets of each sequence in the packed row (cu_seqlens[0] == 0)
    max_seqlen    int   longest sequence, for kernels that size their grid by it
    labels        [T]   optional int64 MLM targets, IGNORE_INDEX where no target
    token_type_ids [T]  optional int64 segment ids
    """

    input_ids: Tensor
    position_ids: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    labels: Tensor | None = None
    token_type_ids: Tensor | None = None
    _host_lengths: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 1:
            raise ValueError(f"input_ids: expected a packed [T] tensor, got shape {tuple(self.input_ids.shape)}")
        if self.cu_seqlens.dim() != 1 or self.cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens: empty batch (need at least one sequence)")
        if self.cu_seqlens.dtype != torch.int32:
            raise ValueError(f"cu_seqlens: expected int32, got {self.cu_seqlens.dtype}")
        for name in ("position_ids", "labels", "token_type_ids"):
            value = getattr(self, name)
            if value is not None and value.shape != self.input_ids.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != input_ids {tuple(self.input_ids.shape)}")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None,
                       device: torch.device | str | None = None) -> UnpaddedBatch:
        """Pack lists of token ids (and optional per-token labels) into one batch."""
        if len(sequences) == 0:
            raise ValueError("sequences: empty batch (need at least one sequence)")
        lengths = [len(s) for s in sequences]
        if min(lengths) == 0:
            raise ValueError(f"sequences: sequence {lengths.index(0)} is empty")
        input_ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
        packed_labels = None
        if labels is not None:
            packed_labels = torch.tensor([t for s in labels for t in s], dtype=torch.long, device=device)
        return cls.from_packed(input_ids, lengths, labels=packed_labels)

    @classmethod
    def from_packed(cls, input_ids: Tensor, lengths: Sequence[int], labels: Tensor | None = None,
                    token_type_ids: Tensor | None = None) -> UnpaddedBatch:
        """Wrap already-packed ids `[T]` given the length of each sequence."""
        lengths = [int(n) for n in lengths]
        if len(lengths) == 0:
            raise ValueError("lengths: empty batch (need at least one sequence)")
        if sum(lengths) != input_ids.numel():
            raise ValueError(f"lengths: sum {sum(lengths)} != number of tokens {input_ids.numel()}")
        cu_seqlens = cu_seqlens_from_lengths(lengths, device=input_ids.device)
        position_ids = position_ids_from_cu_seqlens(cu_seqlens, input_ids.numel())
        return cls(input_ids=input_ids, position_ids=position_ids, cu_seqlens=cu_seqlens,
                   max_seqlen=max(lengths), labels=labels, token_type_ids=token_type_ids,
                   _host_lengths=tuple(lengths))

    # ---- views -----------------------------------------------------------------------------------
    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    @cached_property
    def lengths(self) -> list[int]:
        """Per-sequence lengths on the host (computed once; a device sync at most once per batch)."""
        if self._host_lengths is not None:
            return list(self._host_lengths)
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    @cached_property
    def offsets(self) -> list[int]:
        """Host copy of cu_seqlens."""
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return out

    @property
    def first_token_index(self) -> Tensor:
        """Index `[B]` of each sequence's first token (the CLS position) in the packed row."""
        return self.cu_seqlens[:-1].long()

    @cached_property
    def sequence_index(self) -> Tensor:
        """For every token, the index of its sequence `[T]` (int64)."""
        lengths = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.num_sequences, device=self.input_ids.device), lengths,
                                       output_size=self.num_tokens)

    def to(self, device: torch.device | str) -> UnpaddedBatch:
        moved = {name: (getattr(self, name).to(device) if getattr(self, name) is not None else None)
                 for name in ("input_ids", "position_ids", "cu_seqlens", "labels", "token_type_ids")}
        return replace(self, **moved)

    def with_labels(self, labels: Tensor | None) -> UnpaddedBatch:
        return replace(self, labels=labels)

    def split(self, values: Tensor) -> list[Tensor]:
        """Split a packed `[T, ...]` tensor into per-sequence tensors."""
        return list(torch.split(values, self.lengths))


# ---- the user-facing boundary -------------------------------------------------------------------------
@dataclass(frozen=True)
class PaddingInfo:
    """What `pad` needs to restore a `[B, L, ...]` tensor from packed `[T, ...]` values."""

    indices: Tensor  # [T] flat positions (b * L + l) of the real tokens
    batch_size: int
    padded_length: int


def unpad(input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
          labels: Tensor | None = None) -> tuple[UnpaddedBatch, PaddingInfo]:
    """Hugging Face style padded `input_ids [B, L]` + `attention_mask [B, L]` -> packed batch.

    Real tokens must be left-aligned in each row (right padding), as every HF tokenizer produces for
    encoders; positions restart at 0 for each row.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected [batch, length], got shape {tuple(input_ids.shape)}")
    batch_size, padded_length = input_ids.shape
    if batch_size == 0:
        raise ValueError("input_ids: empty batch (need at least one sequence)")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError(f"attention_mask: row {int((lengths == 0).nonzero()[0])} has no tokens")
    # right padding: the mask must be 1...1 0...0 in every row
    expected = torch.arange(padded_length, device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(mask, expected):
        raise ValueError("attention_mask: only right padding is supported (ones first, then zeros, in every row)")
    indices = mask.flatten().nonzero().squeeze(1)  # [T]

    def gather(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.flatten()[indices]

    batch = UnpaddedBatch.from_packed(gather(input_ids), lengths.tolist(), labels=gather(labels),
                                      token_type_ids=gather(token_type_ids))
    return batch, PaddingInfo(indices=indices, batch_size=batch_size, padded_length=padded_length)


def pad(values: Tensor, info: PaddingInfo, fill: float = 0.0) -> Tensor:
    """Packed `[T, ...]` -> padded `[B, L, ...]`, with `fill` at padded positions."""
    out = values.new_full((info.batch_size * info.padded_length, *values.shape[1:]), fill)
    out[info.indices] = values
    return out.view(info.batch_size, info.padded_length, *values.shape[1:])
