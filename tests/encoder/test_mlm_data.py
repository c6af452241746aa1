from __future__ import annotations

import numpy as np
import torch

from data_prep.tokenizer import SpecialIds
from encoder.batch import IGNORE_INDEX
from encoder.mlm_data import MLMCollator

SPECIAL = SpecialIds(cls=0, sep=2, pad=1, unk=3, mask=999, vocab_size=1000, padded_vocab_size=1024)


def _sequences(total=100_000, seed=0):
    rng = np.random.default_rng(seed)
    out, used = [], 0
    while used < total:
        n = int(rng.integers(3, 700))
        body = rng.integers(4, 999, size=n - 2)
        body[rng.random(n - 2) < 0.02] = 3  # a few <unk> inside the text
        out.append(np.concatenate([[0], body, [2]]))
        used += n
    return out


def test_rates_and_specials():
    sequences = _sequences()
    batch = MLMCollator(SPECIAL, generator=torch.Generator().manual_seed(0))(sequences)
    original = torch.from_numpy(np.concatenate(sequences))
    special = torch.isin(original, torch.tensor(SPECIAL.all_special))
    targets = batch.labels != IGNORE_INDEX
    assert batch.num_tokens == len(original) and batch.lengths == [len(s) for s in sequences]
    rate = targets.sum().item() / (~special).sum().item()
    assert abs(rate - 0.30) < 0.01
    assert not (targets & special).any()  # specials never masked
    assert torch.equal(batch.input_ids[special], original[special])  # and never replaced
    assert torch.equal(batch.labels[targets], original[targets])  # labels are the original ids
    assert torch.equal(batch.input_ids[~targets], original[~targets])  # untouched elsewhere
    changed = batch.input_ids[targets]
    n = targets.sum().item()
    masked = (changed == SPECIAL.mask).sum().item() / n
    kept = (changed == original[targets]).sum().item() / n
    random = 1 - masked - kept
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(random - 0.1) < 0.01
    replaced = changed[(changed != SPECIAL.mask) & (changed != original[targets])]
    assert not torch.isin(replaced, torch.tensor(SPECIAL.all_special)).any()


def test_deterministic_given_generator_and_resumable():
    sequences = _sequences(5000)
    a = MLMCollator(SPECIAL, seed=3)
    b = MLMCollator(SPECIAL, seed=3)
    first = a(sequences)
    assert torch.equal(first.input_ids, b(sequences).input_ids)
    state = a.state_dict()
    nxt = a(sequences)
    c = MLMCollator(SPECIAL, seed=99)
    c.load_state_dict(state)
    assert torch.equal(c(sequences).labels, nxt.labels)
    assert not torch.equal(nxt.labels, first.labels)


def test_tiny_batch_always_has_a_target():
    collator = MLMCollator(SPECIAL, mlm_probability=0.01, seed=0)
    for _ in range(20):
        batch = collator([np.array([0, 10, 2])])
        assert (batch.labels != IGNORE_INDEX).sum() == 1
