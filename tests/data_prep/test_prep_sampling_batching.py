from __future__ import annotations

import numpy as np
import pytest

from data_prep.batching import TokenBudgetBatchSampler, pack
from data_prep.sampling import LanguageMixture, sampling_probabilities


def test_probabilities_follow_alpha():
    q = sampling_probabilities({"en": 900, "sw": 100, "xx": 0}, alpha=0.5)
    assert q["xx"] == 0.0
    assert q["en"] == pytest.approx(0.75) and q["sw"] == pytest.approx(0.25)  # sqrt(.9) : sqrt(.1) = 3 : 1
    assert sampling_probabilities({"en": 900, "sw": 100}, alpha=1.0)["sw"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no tokens"):
        sampling_probabilities({"en": 0})


def test_realised_mix_within_two_points_of_target():
    rng = np.random.default_rng(0)
    sizes = {"en": 20000, "de": 5000, "hi": 800, "sw": 60}  # sequences per language
    language_ids = np.concatenate([np.full(n, i) for i, n in enumerate(sizes.values())])
    lengths = rng.integers(8, 512, size=len(language_ids))
    mixture = LanguageMixture(lengths, language_ids, list(sizes), alpha=0.5, seed=1)
    for epoch in range(2):
        indices = mixture.epoch_indices(epoch)
        report = mixture.report(indices)
        assert report.max_error_points < 2.0, report.format()
    assert report.realised["sw"] > 5 * report.natural["sw"]  # low-resource really up-sampled
    assert np.array_equal(mixture.epoch_indices(3), mixture.epoch_indices(3))
    assert not np.array_equal(mixture.epoch_indices(3), mixture.epoch_indices(4))


def _lengths(n=3000, seed=0):
    return np.random.default_rng(seed).integers(1, 600, size=n)


def test_budget_no_padding_and_exact_cover():
    lengths = _lengths()
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=2048, seed=3, sort_window=256)
    batches = list(sampler)
    assert all(sum(lengths[i] for i in b) <= 2048 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    # length grouping: batches are much more uniform than random ones
    spread = np.mean([np.ptp(lengths[b]) for b in batches if len(b) > 1])
    assert spread < 0.2 * np.ptp(lengths)
    # fill: the average batch uses most of the budget
    assert np.mean([lengths[b].sum() for b in batches]) > 0.8 * 2048
    input_ids, packed_lengths = pack([np.arange(n) + 10 for n in lengths[batches[0]]])
    assert len(input_ids) == lengths[batches[0]].sum()  # no pad tokens in the packed row
    assert packed_lengths == lengths[batches[0]].tolist()


def test_deterministic_and_epoch_dependent():
    lengths = _lengths()
    run = lambda epoch: TokenBudgetBatchSampler(lengths, 1024, seed=7).all_batches(epoch)
    assert run(0) == run(0)
    assert run(0) != run(1)
    assert TokenBudgetBatchSampler(lengths, 1024, seed=8).all_batches(0) != run(0)


@pytest.mark.parametrize("world_size", [2, 3, 8])
def test_rank_sharding(world_size):
    lengths = _lengths(1001)
    per_rank = [list(TokenBudgetBatchSampler(lengths, 1500, seed=1, rank=r, world_size=world_size))
                for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
    flat = [i for batches in per_rank for b in batches for i in b]
    assert sorted(flat) == list(range(1001))  # distinct, nothing dropped or duplicated
    assert all(sum(lengths[i] for i in b) <= 1500 for batches in per_rank for b in batches)


@pytest.mark.parametrize("stop_at", [0, 1, 17, 40])
def test_resume_exactly_after_state_dict(stop_at):
    lengths = _lengths()
    reference = TokenBudgetBatchSampler(lengths, 1024, seed=5, rank=1, world_size=2)
    expected = list(reference) + list(reference)  # two epochs
    sampler = TokenBudgetBatchSampler(lengths, 1024, seed=5, rank=1, world_size=2)
    stream = iter(sampler)
    seen = [next(stream) for _ in range(stop_at)]
    state = sampler.state_dict()
    resumed = TokenBudgetBatchSampler(lengths, 1024, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # a trainer calling set_epoch for the epoch in progress must not rewind
    rest = list(resumed) + list(resumed)
    assert seen + rest[: len(expected) - stop_at] == expected
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBudgetBatchSampler(lengths, 2048, seed=5, world_size=2).load_state_dict(state)


def test_mixture_feeds_the_batcher_with_repeats():
    lengths = _lengths(500)
    language_ids = np.array([0] * 450 + [1] * 50)
    mixture = LanguageMixture(lengths, language_ids, ["en", "sw"], alpha=0.3)
    sampler = TokenBudgetBatchSampler(lengths, 2048, indices=mixture.epoch_indices)
    flat = sorted(i for b in sampler.all_batches(0) for i in b)
    assert flat == sorted(mixture.epoch_indices(0).tolist())  # each drawn occurrence exactly once


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match="sequence 2 .*9000 tokens"):
        TokenBudgetBatchSampler([5, 6, 9000], max_tokens=8192)
