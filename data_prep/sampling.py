"""Language sampling: q_i ∝ p_i^α (XLM-R / mGTE, α = 0.5), realised as a per-epoch list of sequence indices.

α < 1 flattens the natural distribution p_i (share of tokens): low-resource languages are up-sampled
(their sequences repeat within an epoch) and high-resource ones down-sampled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def sampling_probabilities(token_counts: Mapping[str, int], alpha: float = 0.5) -> dict[str, float]:
    """q_i = p_i^α / Σ_j p_j^α over languages with text; languages with no tokens get 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    total = sum(token_counts.values())
    if total <= 0:
        raise ValueError(f"token_counts: no tokens in any language ({dict(token_counts)})")
    weights = {lang: (n / total) ** alpha if n > 0 else 0.0 for lang, n in token_counts.items()}
    norm = sum(weights.values())
    return {lang: w / norm for lang, w in weights.items()}


@dataclass(frozen=True)
class MixReport:
    """Token shares per language: natural (corpus), target (q_i) and realised (what the epoch holds)."""

    natural: dict[str, float]
    target: dict[str, float]
    realised: dict[str, float]

    @property
    def max_error_points(self) -> float:
        return 100.0 * max(abs(self.realised[k] - self.target[k]) for k in self.target)

    def format(self) -> str:
        rows = [f"{'lang':<8}{'natural':>9}{'target':>9}{'realised':>10}"]
        for lang in self.target:
            rows.append(f"{lang:<8}{100 * self.natural[lang]:>8.2f}%{100 * self.target[lang]:>8.2f}%"
                        f"{100 * self.realised[lang]:>9.2f}%")
        rows.append(f"max |realised - target| = {self.max_error_points:.2f} points")
        return "\n".join(rows)


class LanguageMixture:
    """Draws, for each epoch, sequence indices whose token mix follows q_i ∝ p_i^α.

    lengths       [N] tokens per sequence
    language_ids  [N] index into `languages` of each sequence
    epoch_tokens  tokens per epoch (default: the corpus size, so an epoch is "one corpus worth" of tokens)
    Within a language, sequences are taken in a fresh random order and the order restarts when a language
    is exhausted, so up-sampled languages repeat whole passes before any sequence is seen a third time.
    """

    def __init__(self, lengths: np.ndarray, language_ids: np.ndarray, languages: Sequence[str],
                 alpha: float = 0.5, epoch_tokens: int | None = None, seed: int = 0) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.language_ids = np.asarray(language_ids)
        self.languages = list(languages)
        self.members = [np.flatnonzero(self.language_ids == i) for i in range(len(self.languages))]
        counts = {lang: int(self.lengths[m].sum()) for lang, m in zip(self.languages, self.members)}
        total = sum(counts.values())
        self.natural = {lang: n / total if total else 0.0 for lang, n in counts.items()}
        self.target = sampling_probabilities(counts, alpha)
        self.epoch_tokens = int(epoch_tokens if epoch_tokens is not None else total)
        self.seed = seed

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Sequence indices of one epoch (grouped by language; the batcher shuffles them)."""
        rng = np.random.default_rng([self.seed, epoch, 0x5A4D])
        parts = []
        for lang, members in zip(self.languages, self.members):
            budget = self.target[lang] * self.epoch_tokens
            if budget <= 0 or len(members) == 0:
                continue
            parts.append(self._take(members, budget, rng))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _take(self, members: np.ndarray, budget: float, rng: np.random.Generator) -> np.ndarray:
        taken: list[np.ndarray] = []
        remaining = budget
        while remaining > 0:
            order = members[rng.permutation(len(members))]
            cumulative = np.cumsum(self.lengths[order])
            if cumulative[-1] <= remaining:
                taken.append(order)
                remaining -= cumulative[-1]
                continue
            # stop at the sequence that lands closest to the budget
            cut = int(np.searchsorted(cumulative, remaining))
            over = cumulative[cut] - remaining
            under = remaining - (cumulative[cut - 1] if cut > 0 else 0)
            taken.append(order[:cut + 1 if over < under else cut])
            break
        return np.concatenate(taken)

    def report(self, indices: np.ndarray) -> MixReport:
        """The mix an index list actually realises, in token shares."""
        tokens = np.bincount(self.language_ids[indices], weights=self.lengths[indices],
                             minlength=len(self.languages))
        total = tokens.sum()
        realised = {lang: float(tokens[i] / total) if total else 0.0 for i, lang in enumerate(self.languages)}
        return MixReport(natural=self.natural, target=self.target, realised=realised)
