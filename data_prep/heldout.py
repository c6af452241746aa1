"""Held-out evaluation sets from a source that no training stage sees, and the check that none of its text
reached a training file.

    heldout/<source>/mono-<lang>/    heading -> section text, both in <lang> (BEIR, qrels test + dev)
    heldout/<source>/cross-<lang>/   heading in <lang> -> the same section's text in English
    heldout/<source>/longdoc/        heading -> the whole long page holding its section (BEIR + needles.jsonl
                                     with the section's character span in the page, so an evaluation can
                                     tell needles past token 512 with its own tokenizer: `needle_token_offsets`)

Documents are split into test and dev by page (the same pages in every language, so the cross-lingual sets
agree). A heading is a query only if it names one section: headings repeated inside a language, headings
left untranslated (equal to the English one) and headings shorter than a few letters are not queries.
Corpus texts carry no headings (the query would be in the document) and no title.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.beir import BeirData, write_beir
from data_prep.clean import LEAK_MIN_SENTENCE, leak_key, leak_sentences, sentences
from data_prep.files import DataError, read_jsonl, write_jsonl
from data_prep.sources import Document
from data_prep.sources.text import letters
from data_prep.weakpairs import long_document

TRAINING_DIRS = ("mlm", "pairs", "long")  # every file under these is training data


@dataclass(frozen=True)
class HeldoutRules:
    min_section_chars: int = 150
    min_heading_letters: int = 3  # 2 for unspaced scripts
    dev_fraction: float = 0.3  # of pages
    min_long_chars: int = 4000  # about 1k tokens: a page shorter than this is no long document
    needles_per_doc: int = 6
    max_queries: int | None = None  # per set (seeded sample)


@dataclass(frozen=True)
class NeedleSpan:
    query_id: str
    doc_id: str
    lang: str
    section_key: str
    char_start: int  # the section's text is doc_text[char_start:char_end]
    char_end: int
    doc_chars: int
    relative_position: float  # char_start / doc_chars


# ---- fingerprints and the leak check -----------------------------------------------------------------
@dataclass
class Fingerprints:
    """Leak keys of held-out texts: whole units (titles, headings, paragraphs) and their long sentences."""

    units: set[str]
    sentences: set[str]

    @classmethod
    def of(cls, docs: Iterable[Document]) -> Fingerprints:
        units, sents = set(), set()
        for doc in docs:
            for text in (doc.title, *(s.heading for s in doc.sections), *doc.paragraphs()):
                if text:
                    units.add(leak_key(text))
                    sents.update(leak_sentences(text))
        units.discard("")
        return cls(units, sents)

    def hit(self, text: str) -> str | None:
        """The held-out key found in `text`: the whole text or one of its sentences is a held-out unit, or one
        of its long sentences is a held-out sentence; else None."""
        key = leak_key(text)
        if key in self.units:
            return key
        for sentence in sentences(text):
            part = leak_key(sentence)
            if part in self.units or (len(part) >= LEAK_MIN_SENTENCE and part in self.sentences):
                return part
        return None

    def merge(self, other: Fingerprints) -> Fingerprints:
        return Fingerprints(self.units | other.units, self.sentences | other.sentences)


def _texts(row: dict) -> Iterable[str]:
    for name in ("text", "query", "positive", "title"):
        if isinstance(row.get(name), str):
            yield row[name]
    yield from row.get("negatives") or []


def check_no_leakage(data_dir: str | Path, fingerprints: Fingerprints) -> dict:
    """Scan every training file (mlm/, pairs/, long/) line by line: no line of any text field may be a
    held-out unit or contain a held-out sentence. Raises DataError naming file, line and text; returns counts."""
    data_dir = Path(data_dir)
    files, lines_checked = 0, 0
    for sub in TRAINING_DIRS:
        for path in sorted((data_dir / sub).glob("**/*.jsonl")):
            files += 1
            for number, row in read_jsonl(path):
                for text in _texts(row):
                    for line in text.split("\n"):
                        lines_checked += 1
                        found = fingerprints.hit(line)
                        if found is not None:
                            raise DataError(f"{path}:{number}: held-out text reached a training file: {found[:120]!r}")
    return {"files": files, "lines": lines_checked, "leaks": 0, "heldout_units": len(fingerprints.units),
            "heldout_sentences": len(fingerprints.sentences)}


# ---- the eval sets -----------------------------------------------------------------------------------
def split_pages(doc_ids: Iterable[str], dev_fraction: float, seed: int) -> dict[str, str]:
    ids = sorted(set(doc_ids))
    random.Random(f"heldout-{seed}").shuffle(ids)
    n_dev = round(dev_fraction * len(ids))
    return {doc_id: ("dev" if i < n_dev else "test") for i, doc_id in enumerate(ids)}


def _eligible(docs: Sequence[Document], lang: str, english: dict[tuple[str, str], str] | None,
              rules: HeldoutRules) -> dict[tuple[str, str], tuple[str, str]]:
    """(doc_id, section key) -> (heading, section text) for the sections whose heading identifies them."""
    min_letters = 2 if lang in ("zh", "ja", "ko") else rules.min_heading_letters
    found = {}
    for doc in docs:
        for section in doc.sections:
            text = section.text()
            if len(text) < rules.min_section_chars or letters(section.heading) < min_letters:
                continue
            if english is not None and english.get((doc.doc_id, section.key)) == section.heading:
                continue  # untranslated
            found[(doc.doc_id, section.key)] = (section.heading, text)
    repeated = {h for h, n in Counter(leak_key(h) for h, _ in found.values()).items() if n > 1}
    return {k: v for k, v in found.items() if leak_key(v[0]) not in repeated}


def _sample(qids: list, rules: HeldoutRules, seed: int, name: str) -> list:
    if rules.max_queries and len(qids) > rules.max_queries:
        return sorted(random.Random(f"{name}-{seed}").sample(qids, rules.max_queries))
    return qids


def heading_sets(docs_by_lang: dict[str, list[Document]], rules: HeldoutRules = HeldoutRules(),
                 seed: int = 0, pivot: str = "en") -> dict[str, BeirData]:
    """{"mono-<lang>": ..., "cross-<lang>": ...}: see the module docstring. Needs the pivot for cross sets."""
    splits = split_pages((d.doc_id for docs in docs_by_lang.values() for d in docs), rules.dev_fraction, seed)
    english = {(d.doc_id, s.key): s.heading for d in docs_by_lang.get(pivot, []) for s in d.sections}
    sections = {lang: _eligible(docs, lang, english if lang != pivot else None, rules)
                for lang, docs in docs_by_lang.items()}
    sets = {}
    for lang in sorted(sections):
        corpus = {f"{doc_id}#{key}": {"title": "", "text": text} for (doc_id, key), (_, text) in sections[lang].items()}
        if corpus:
            sets[f"mono-{lang}"] = _queries(sections[lang], corpus, lang, splits, rules, seed, f"mono-{lang}")
    if pivot in sections:
        pivot_corpus = {f"{doc_id}#{key}": {"title": "", "text": text}
                        for (doc_id, key), (_, text) in sections[pivot].items()}
        for lang in sorted(sections):
            if lang == pivot:
                continue
            shared = {k: v for k, v in sections[lang].items() if f"{k[0]}#{k[1]}" in pivot_corpus}
            if shared:
                sets[f"cross-{lang}"] = _queries(shared, pivot_corpus, lang, splits, rules, seed, f"cross-{lang}")
    return sets


def _queries(sections: dict, corpus: dict, lang: str, splits: dict[str, str], rules: HeldoutRules, seed: int,
             name: str) -> BeirData:
    queries, qrels = {}, {"test": {}, "dev": {}}
    for doc_id, key in _sample(sorted(sections), rules, seed, name):
        qid = f"{lang}:{doc_id}#{key}"
        queries[qid] = {"text": sections[(doc_id, key)][0], "lang": lang}
        qrels[splits[doc_id]][qid] = {f"{doc_id}#{key}": 1}
    return BeirData(corpus=corpus, queries=queries, qrels={k: v for k, v in qrels.items() if v})


def longdoc_set(docs_by_lang: dict[str, list[Document]], rules: HeldoutRules = HeldoutRules(),
                seed: int = 0) -> tuple[BeirData, list[NeedleSpan]]:
    """Whole pages of at least `min_long_chars` (every language in one corpus, ids `<lang>:<page>`); queries
    are section headings that identify their section (as in the heading sets), at most `needles_per_doc`
    per page spread over its length; the page holding the section is the only relevant document."""
    splits = split_pages((d.doc_id for docs in docs_by_lang.values() for d in docs), rules.dev_fraction, seed)
    english = {(d.doc_id, s.key): s.heading for d in docs_by_lang.get("en", []) for s in d.sections}
    corpus, queries, qrels, needles = {}, {}, {"test": {}, "dev": {}}, []
    for lang in sorted(docs_by_lang):
        eligible = _eligible(docs_by_lang[lang], lang, english if lang != "en" else None, rules)
        for doc in docs_by_lang[lang]:
            long = long_document(doc)
            if len(long.text) < rules.min_long_chars:
                continue
            doc_key = f"{lang}:{doc.doc_id}"
            spans = [s for s in long.sections if (doc.doc_id, s["key"]) in eligible and s["start"] > 0]
            if not spans:
                continue
            corpus[doc_key] = {"title": "", "text": long.text}
            step = max(1, len(spans) / rules.needles_per_doc)
            for span in [spans[int(i * step)] for i in range(min(rules.needles_per_doc, len(spans)))]:
                qid = f"{lang}:{doc.doc_id}#{span['key']}"
                queries[qid] = {"text": eligible[(doc.doc_id, span["key"])][0], "lang": lang}
                qrels[splits[doc.doc_id]][qid] = {doc_key: 1}
                needles.append(NeedleSpan(qid, doc_key, lang, span["key"], span["start"], span["end"], len(long.text),
                                          round(span["start"] / len(long.text), 4)))
    if not corpus:
        raise DataError(f"longdoc: no held-out page of {rules.min_long_chars}+ characters has a section with a "
                        "heading that identifies it")
    return BeirData(corpus, queries, {k: v for k, v in qrels.items() if v}), needles


def write_longdoc(data: BeirData, needles: Sequence[NeedleSpan], directory: str | Path) -> Path:
    directory = write_beir(data, directory)
    write_jsonl(directory / "needles.jsonl", [asdict(n) for n in needles])
    return directory


def first_token_reaching(spans: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the first non-empty token (in an offset mapping) that ends past character `char`: the token
    where text starting at `char` begins; `len(spans)` when none does."""
    return next((i for i, (s, e) in enumerate(spans) if e > s and e > char), len(spans))


def needle_token_offsets(directory: str | Path, tokenizer) -> dict[str, int]:
    """Query id -> index of the needle section's first token in its encoded document (`<s>` = 0), with the
    run's fast tokenizer: `> 511` means a 512-token truncation cannot see the answer."""
    from data_prep.beir import read_beir

    directory = Path(directory)
    corpus = read_beir(directory, splits=("test",)).corpus
    offsets = {}
    encoded: dict[str, list] = {}
    for _, row in read_jsonl(directory / "needles.jsonl"):
        doc_id = row["doc_id"]
        if doc_id not in encoded:
            encoded[doc_id] = tokenizer(corpus[doc_id]["text"], return_offsets_mapping=True,
                                        add_special_tokens=True)["offset_mapping"]
        spans = encoded[doc_id]
        offsets[row["query_id"]] = first_token_reaching(spans, row["char_start"])
    return offsets
