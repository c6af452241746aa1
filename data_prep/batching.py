"""Length-grouped, token-budget batches of unpadded sequences, deterministic and resumable, sharded by rank.

Each epoch: shuffle the sequence indices (seeded by seed and epoch), sort each window of `sort_window`
sequences by length, cut every window greedily into batches whose total length stays within
`max_tokens`, then shuffle the batch order. Windows keep the batches random across the corpus while
still grouping similar lengths (so the attention cost per batch, ∝ Σ len², is predictable).

Use as a `torch.utils.data.DataLoader(batch_sampler=...)`. data_prep stops at indices and packed ids (`pack`):
the model's batch (`encoder.batch.UnpaddedBatch`, masked by `encoder.mlm_data.MLMCollator` for MLM) is
built in `encoder`, so this package never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

IndexSource = Sequence[int] | np.ndarray | Callable[[int], np.ndarray] | None


class TokenBudgetBatchSampler:
    """Yields lists of sequence indices with Σ length <= max_tokens; no padding anywhere.

    lengths      [N] length of every sequence in the dataset
    indices      which sequences make an epoch: None (all), a fixed list, or `epoch -> indices`
                 (e.g. `LanguageMixture.epoch_indices`); repeats are allowed and each occurrence is used once
    rank / world_size: every rank gets distinct batches and the same number of them; when the batch count
                 does not divide, the largest batches are split in two (never duplicated or dropped)
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, max_tokens: int, seed: int = 0,
                 indices: IndexSource = None, rank: int = 0, world_size: int = 1,
                 max_sequences: int | None = None, sort_window: int = 4096, shuffle: bool = True) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} is not in [0, world_size={world_size})")
        if len(self.lengths) and int(self.lengths.max()) > max_tokens:
            longest = int(self.lengths.argmax())
            raise ValueError(f"max_tokens: {max_tokens} is smaller than sequence {longest} "
                             f"({int(self.lengths[longest])} tokens); raise the budget or chunk shorter")
        if len(self.lengths) and int(self.lengths.min()) <= 0:
            raise ValueError(f"lengths: sequence {int(self.lengths.argmin())} is empty")
        self.max_tokens, self.seed, self.rank, self.world_size = max_tokens, seed, rank, world_size
        self.max_sequences, self.sort_window, self.shuffle = max_sequences, sort_window, shuffle
        self._indices = indices
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded on this rank
        self._cache: tuple[int, list[list[int]]] | None = None

    # ---- the plan of one epoch -------------------------------------------------------------------
    def epoch_indices(self, epoch: int) -> np.ndarray:
        if self._indices is None:
            return np.arange(len(self.lengths))
        if callable(self._indices):
            return np.asarray(self._indices(epoch), dtype=np.int64)
        return np.asarray(self._indices, dtype=np.int64)

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of `epoch`, in order; rank r takes entries r, r + W, r + 2W, ..."""
        rng = np.random.default_rng([self.seed, epoch])
        order = self.epoch_indices(epoch)
        if len(order) == 0:
            raise ValueError("indices: an epoch with no sequences")
        if self.shuffle:
            order = order[rng.permutation(len(order))]
        batches: list[list[int]] = []
        for start in range(0, len(order), self.sort_window):
            window = order[start:start + self.sort_window]
            window = window[np.argsort(self.lengths[window], kind="stable")]
            batches.extend(self._fill(window))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return _split_until_divisible(batches, self.world_size)

    def _fill(self, sorted_window: np.ndarray) -> list[list[int]]:
        batches, current, tokens = [], [], 0
        cap = self.max_sequences or len(sorted_window)
        for index, length in zip(sorted_window.tolist(), self.lengths[sorted_window].tolist()):
            if current and (tokens + length > self.max_tokens or len(current) >= cap):
                batches.append(current)
                current, tokens = [], 0
            current.append(index)
            tokens += length
        if current:
            batches.append(current)
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.all_batches(epoch)[self.rank::self.world_size])
        return self._cache[1]

    # ---- iteration and resume -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch, unless it is the epoch in progress (so resume survives)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self, consumed: int | None = None) -> dict:
        """Where to resume. With a prefetching DataLoader pass `consumed` (batches the trainer has used),
        since the sampler itself runs ahead of the training loop."""
        return {"epoch": self.epoch, "position": self.position if consumed is None else consumed,
                "seed": self.seed, "max_tokens": self.max_tokens, "world_size": self.world_size,
                "rank": self.rank, "num_sequences": len(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "max_tokens", "world_size", "num_sequences"):
            mine = len(self.lengths) if key == "num_sequences" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"state_dict: {key} = {state[key]} was saved, this sampler has {mine}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _split_until_divisible(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """Split the batches with most sequences in two until every rank can get the same count."""
    batches = list(batches)
    while len(batches) % world_size:
        splittable = [i for i, b in enumerate(batches) if len(b) > 1]
        if not splittable:
            raise ValueError(f"world_size: {len(batches)} single-sequence batches cannot be shared evenly by "
                             f"{world_size} ranks; use more data or a smaller world size")
        i = max(splittable, key=lambda j: (len(batches[j]), -j))
        half = len(batches[i]) // 2
        batches[i:i + 1] = [batches[i][:half], batches[i][half:]]
    return batches


# ---- collate -------------------------------------------------------------------------------------------
class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset over a `ShardReader` (or any indexable of id arrays) for a DataLoader."""

    def __init__(self, sequences) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.sequences[index], dtype=np.int64)


def pack(sequences: Sequence[np.ndarray | Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
    """Concatenate sequences into packed ids `[T]` (int64) and their lengths."""
    arrays = [np.asarray(s, dtype=np.int64) for s in sequences]
    return torch.from_numpy(np.concatenate(arrays)), [len(a) for a in arrays]
