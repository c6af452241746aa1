"""MLM masking on packed sequences (RoBERTa style, mGTE rate 30%): 80% <mask>, 10% random, 10% unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data_prep.batching import pack
from data_prep.tokenizer import SpecialIds
from encoder.batch import IGNORE_INDEX, UnpaddedBatch


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
