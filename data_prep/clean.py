"""Paragraph cleaning for the documentation corpora: quality filter, language ID, exact and near-duplicate
removal, and the held-out leak key.

Language ID is py3langid (BSD-3-Clause, its naive-Bayes model ships inside the wheel, so it runs offline):
a paragraph is kept when the most likely label is its declared language (or one of that language's close
relatives, `languages.LANGID_ALIASES`), or when their probabilities add up to at least `threshold`. Near
duplicates are found with datasketch's MinHash LSH over character 5-grams of the normalised text (so it works
for unspaced scripts too).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import cache

from data_prep.pairs import normalise
from data_prep.sources.languages import langid_labels
from data_prep.sources.text import letters

UNSPACED = {"zh", "ja", "ko", "th", "km"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？؟])")  # on plain text, never on markup
LEAK_MIN_SENTENCE = 40  # characters: shorter sentences ("See below.") are common to any two manuals


def leak_key(text: str) -> str:
    """The form in which a held-out text is recognised anywhere: NFKC, case-folded, whitespace collapsed."""
    return normalise(unicodedata.normalize("NFKC", text))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s and s.strip()]


def leak_sentences(text: str) -> list[str]:
    """Leak keys of the sentences of `text` long enough to identify it."""
    return [k for s in sentences(text) if len(k := leak_key(s)) >= LEAK_MIN_SENTENCE]


@dataclass(frozen=True)
class QualityRules:
    min_letters: int = 25  # letters in a paragraph (10 for unspaced scripts)
    min_letter_share: float = 0.55  # letters / non-space characters: drops tables of numbers, symbols
    min_word_share: float = 0.6  # plain words / whitespace tokens (spaced scripts): drops commands and paths
    max_chars: int = 20_000


def quality_problem(text: str, lang: str, rules: QualityRules = QualityRules()) -> str | None:
    """Why a paragraph is not prose worth keeping ("too_short", "not_prose", "too_long"), or None."""
    n_letters = letters(text)
    if n_letters < (10 if lang in UNSPACED else rules.min_letters):
        return "too_short"
    if len(text) > rules.max_chars:
        return "too_long"
    visible = sum(not c.isspace() for c in text)
    if n_letters < rules.min_letter_share * visible:
        return "not_prose"
    if lang not in UNSPACED:
        tokens = text.split()
        if sum(_plain_word(t) for t in tokens) < rules.min_word_share * len(tokens):
            return "not_prose"
    return None


WORD_EDGES = ".,;:!?()[]\"'«»„“”‘’¿¡…—–-"


def _plain_word(token: str) -> bool:
    """A word of prose: letters, with inner hyphens or apostrophes ("up-to-date", "don't"), edge punctuation."""
    core = token.strip(WORD_EDGES).replace("-", "").replace("'", "").replace("’", "")
    return bool(core) and core.isalpha()


@cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageCheck:
    """Does a paragraph's text match its declared language? Counts the decisions."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.identifier = _identifier()
        self.supported = set(self.identifier.labels)
        self.mismatches: Counter = Counter()  # (declared, predicted) -> paragraphs

    def matches(self, text: str, lang: str) -> bool:
        accepted = langid_labels(lang) & self.supported
        if not accepted:
            return True  # a language the model does not know is never dropped
        ranked = self.identifier.rank(text)
        if ranked[0][0] in accepted or sum(p for label, p in ranked if label in accepted) >= self.threshold:
            return True
        self.mismatches[(lang, ranked[0][0])] += 1
        return False


def _shingles(key: str, n: int = 5) -> set[bytes]:
    return {key[i:i + n].encode("utf-8", "surrogatepass") for i in range(max(1, len(key) - n + 1))}


def _hash32(data: bytes) -> int:
    import xxhash

    return xxhash.xxh32_intdigest(data)


@dataclass
class Deduplicator:
    """Per language: exact duplicates (by leak key) and near duplicates (MinHash LSH, Jaccard >= threshold
    over character 5-grams). Held-out paragraphs are registered first so training text close to them is found."""

    threshold: float = 0.8
    num_perm: int = 64
    _exact: dict = field(default_factory=dict)  # lang -> {key: owner}
    _lsh: dict = field(default_factory=dict)  # lang -> MinHashLSH

    def _index(self, lang: str):
        from datasketch import MinHashLSH

        if lang not in self._lsh:
            self._lsh[lang] = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
            self._exact[lang] = {}
        return self._lsh[lang], self._exact[lang]

    def check(self, text: str, lang: str, owner: str = "train") -> str | None:
        """Register `text`; return None if new, else "duplicate" / "near_duplicate" (of training text) or
        "heldout_duplicate" / "heldout_near_duplicate" (of text registered with owner="heldout")."""
        from datasketch import MinHash

        lsh, exact = self._index(lang)
        key = leak_key(text)
        if key in exact:
            return "heldout_duplicate" if exact[key] == "heldout" else "duplicate"
        minhash = MinHash(num_perm=self.num_perm, hashfunc=_hash32)
        minhash.update_batch(list(_shingles(key)))
        near = lsh.query(minhash)
        if near:
            return "heldout_near_duplicate" if any(n.startswith("heldout:") for n in near) else "near_duplicate"
        name = f"{owner}:{len(exact)}"
        exact[key] = owner
        lsh.insert(name, minhash)
        return None
