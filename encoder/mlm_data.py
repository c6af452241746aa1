"""MLM data: token shards -> length-truncated sequences -> language-mixed, token-budget batches per rank ->
masked `UnpaddedBatch`es (RoBERTa style, mGTE rate 30%: 80% <mask>, 10% random, 10% unchanged).

data_prep owns the shards, the language mixture and the token-budget sampler (plain arrays and indices);
this module owns what the model consumes: the masking and the packed batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from data_prep.batching import TokenBudgetBatchSampler, pack
from data_prep.sampling import LanguageMixture
from data_prep.shards import ShardReader
from data_prep.tokenizer import SpecialIds

from .batch import IGNORE_INDEX, UnpaddedBatch
from .distributed import DistEnv
from .training import require


@dataclass
class DataConfig:
    shards: str = "runs/data"  # a data_prep shard directory (manifest.json + shards/)
    max_length: int = 2048  # longer sequences are cut to this (keeping </s>); stage 1 2048, stage 2 8192
    max_tokens: int = 65536  # token budget of one packed micro-batch on one rank
    max_sequences: int | None = None  # optional cap on sequences per micro-batch
    sort_window: int = 4096  # length grouping window of the sampler
    alpha: float = 0.5  # language sampling q_i ∝ p_i^α (mGTE / XLM-R)
    mlm_probability: float = 0.3  # mGTE masks 30%
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    verify_shards: bool = False  # sha256 every shard at start-up (slow on TBs)

    def __post_init__(self) -> None:
        require(self.max_length >= 3, "data.max_length", "must be >= 3 (<s>, a token, </s>)", self.max_length)
        require(self.max_tokens >= self.max_length, "data.max_tokens",
                f"must hold one sequence of data.max_length={self.max_length} tokens", self.max_tokens)
        require(self.max_sequences is None or self.max_sequences >= 1, "data.max_sequences", "must be >= 1",
                self.max_sequences)
        require(self.sort_window >= 1, "data.sort_window", "must be >= 1", self.sort_window)
        require(self.alpha >= 0, "data.alpha", "must be >= 0", self.alpha)
        require(0 < self.mlm_probability < 1, "data.mlm_probability", "must be in (0, 1)", self.mlm_probability)
        require(self.mask_fraction >= 0 and self.random_fraction >= 0
                and self.mask_fraction + self.random_fraction <= 1, "data.mask_fraction",
                f"mask_fraction + random_fraction (= {self.mask_fraction} + {self.random_fraction}) must be in [0, 1]",
                self.mask_fraction)


class MLMCollator:
    """`collate_fn` for a DataLoader: list of id sequences -> `UnpaddedBatch` with MLM `labels`.

    Positions chosen with probability `mlm_probability` among non-special tokens get a label (their
    original id); of those, `mask_fraction` become <mask>, `random_fraction` a random non-special token,
    and the rest stay unchanged. Every other label is IGNORE_INDEX. The generator makes masks
    reproducible; save `state_dict()` beside the sampler's for an exact resume. With DataLoader workers
    each worker holds a copy of the generator, so seed per worker (or use num_workers=0).
    """

    def __init__(self, special: SpecialIds, mlm_probability: float = 0.3, mask_fraction: float = 0.8,
                 random_fraction: float = 0.1, generator: torch.Generator | None = None, seed: int = 0) -> None:
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability: expected a value in (0, 1), got {mlm_probability}")
        if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1.0:
            raise ValueError(f"mask_fraction + random_fraction: {mask_fraction} + {random_fraction} must be in [0, 1]")
        self.special = special
        self.mlm_probability, self.mask_fraction, self.random_fraction = mlm_probability, mask_fraction, random_fraction
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.special_ids = torch.tensor(sorted(set(special.all_special)), dtype=torch.long)
        allowed = torch.ones(special.vocab_size, dtype=torch.bool)
        allowed[self.special_ids] = False
        self.replacement_ids = allowed.nonzero().squeeze(1)  # random tokens are never special

    def __call__(self, sequences: Sequence[np.ndarray | Sequence[int]]) -> UnpaddedBatch:
        input_ids, lengths = pack(sequences)
        masked, labels = self.mask(input_ids)
        return UnpaddedBatch.from_packed(masked, lengths, labels=labels)

    def mask(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed ids `[T]` -> (masked ids `[T]`, labels `[T]`); the input is not modified."""
        gen = self.generator
        candidates = ~torch.isin(input_ids, self.special_ids)  # [T]
        chosen = (torch.rand(input_ids.shape, generator=gen) < self.mlm_probability) & candidates
        if not bool(chosen.any()) and bool(candidates.any()):
            # a batch without targets gives a NaN loss; force one target instead
            positions = candidates.nonzero().squeeze(1)
            chosen[positions[torch.randint(len(positions), (1,), generator=gen)]] = True
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        action = torch.rand(input_ids.shape, generator=gen)
        to_mask = chosen & (action < self.mask_fraction)
        to_random = chosen & (action >= self.mask_fraction) & (action < self.mask_fraction + self.random_fraction)
        masked = input_ids.clone()
        masked[to_mask] = self.special.mask
        picks = torch.randint(len(self.replacement_ids), (int(to_random.sum()),), generator=gen)
        masked[to_random] = self.replacement_ids[picks]
        return masked, labels

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class TruncatedSequences:
    """Shard sequences cut to `max_length` (the last kept token replaced by </s>), lengths to match."""

    def __init__(self, reader: ShardReader, max_length: int, sep_id: int) -> None:
        self.reader, self.max_length, self.sep_id = reader, max_length, sep_id
        self.lengths = np.minimum(reader.lengths, max_length)

    def __getitem__(self, index: int) -> np.ndarray:
        ids = np.asarray(self.reader[index], dtype=np.int64)
        if len(ids) > self.max_length:
            ids = ids[: self.max_length].copy()
            ids[-1] = self.sep_id
        return ids


def special_ids_from_manifest(reader: ShardReader) -> SpecialIds:
    info = reader.manifest["tokenizer"]
    return SpecialIds(**{f.name: int(info[f.name]) for f in fields(SpecialIds)})


class MLMData:
    """Per-rank stream of MLM micro-batches; `state_dict` resumes at the exact next batch and mask."""

    def __init__(self, config: DataConfig, env: DistEnv, seed: int) -> None:
        reader = ShardReader(config.shards, verify=config.verify_shards)
        self.special = special_ids_from_manifest(reader)
        self.sequences = TruncatedSequences(reader, config.max_length, self.special.sep)
        mixture = LanguageMixture(self.sequences.lengths, reader.language_ids, reader.languages, config.alpha,
                                  seed=seed)
        self.sampler = TokenBudgetBatchSampler(self.sequences.lengths, config.max_tokens, seed=seed,
                                               indices=mixture.epoch_indices, rank=env.rank,
                                               world_size=env.world_size, max_sequences=config.max_sequences,
                                               sort_window=config.sort_window)
        # each rank masks with its own stream
        self.collator = MLMCollator(self.special, config.mlm_probability, config.mask_fraction,
                                    config.random_fraction, seed=seed * 1_000_003 + env.rank)
        self._batches = self._forever()

    def _forever(self):
        while True:  # the sampler advances its epoch at the end of each pass
            yield from self.sampler

    def next_batch(self) -> UnpaddedBatch:
        return self.collator([self.sequences[i] for i in next(self._batches)])

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "collator": self.collator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.collator.load_state_dict(state["collator"])
        self._batches = self._forever()
