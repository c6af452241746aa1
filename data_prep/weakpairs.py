"""Pairs from structured documents (data_prep.sources.Document), for contrastive pre-training and fine-tuning.

Weak pairs (`pairs/cpt.jsonl`), each record's `source` is `<corpus>:<kind>`:
    heading   section heading -> the section's text
    title     page title -> the page body (its first `max_doc_chars` characters)
    sentence  first sentence of a paragraph -> the rest of the paragraph
    xling     a section in one language -> the same section in English (and in one other language)
Fine-tuning pairs (`pairs/train.jsonl`): heading -> section in the same language, and heading -> the same
section in English; hard negatives are mined later (data_prep.pairs.mine_hard_negatives, or the pipeline
with its own encoder). Long-document pairs: a section heading -> the whole long document that holds it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from data_prep.clean import sentences
from data_prep.pairs import PairRecord
from data_prep.sources import Document, Section
from data_prep.sources.text import letters


@dataclass(frozen=True)
class PairLimits:
    min_section_chars: int = 120  # a positive shorter than this says too little
    max_doc_chars: int = 3000  # positives are cut to this many characters (at a paragraph end when possible)
    sentence_pairs_per_doc: int = 3
    min_heading_letters: int = 3


def clip(paragraphs: Sequence[str], max_chars: int) -> str:
    """Paragraphs joined by newlines, stopping before the one that would pass `max_chars` (the first is kept
    whole up to max_chars)."""
    out, used = [], 0
    for p in paragraphs:
        if out and used + len(p) + 1 > max_chars:
            break
        out.append(p[:max_chars])
        used += len(p) + 1
    return "\n".join(out)


def _usable_heading(section: Section, limits: PairLimits) -> bool:
    return bool(section.heading) and letters(section.heading) >= limits.min_heading_letters


def _section_text(section: Section, limits: PairLimits) -> str:
    text = clip(section.paragraphs, limits.max_doc_chars)
    return text if len(text) >= limits.min_section_chars else ""


def heading_pairs(doc: Document, limits: PairLimits, kind: str = "heading") -> list[PairRecord]:
    out = []
    for section in doc.sections:
        text = _section_text(section, limits)
        if text and _usable_heading(section, limits) and section.heading != doc.title:
            out.append(PairRecord(section.heading, text, (), doc.lang, doc.lang, f"{doc.source}:{kind}"))
    return out


def title_pair(doc: Document, limits: PairLimits) -> list[PairRecord]:
    body = clip(doc.paragraphs(), limits.max_doc_chars)
    if letters(doc.title) < limits.min_heading_letters or len(body) < limits.min_section_chars:
        return []
    return [PairRecord(doc.title, body, (), doc.lang, doc.lang, f"{doc.source}:title")]


def sentence_pairs(doc: Document, limits: PairLimits, rng: random.Random) -> list[PairRecord]:
    candidates = []
    for paragraph in doc.paragraphs():
        parts = sentences(paragraph)
        if len(parts) >= 2:
            rest = " ".join(parts[1:])
            if letters(parts[0]) >= 15 and letters(rest) >= 30:
                candidates.append(PairRecord(parts[0], rest, (), doc.lang, doc.lang, f"{doc.source}:sentence"))
    return rng.sample(candidates, min(limits.sentence_pairs_per_doc, len(candidates)))


def aligned(docs: Iterable[Document]) -> dict[tuple[str, str], dict[str, Document]]:
    """(source, doc_id) -> language -> document."""
    out: dict[tuple[str, str], dict[str, Document]] = {}
    for doc in docs:
        out.setdefault((doc.source, doc.doc_id), {})[doc.lang] = doc
    return out


def _sections_by_key(doc: Document) -> dict[str, Section]:
    return {s.key: s for s in doc.sections}


def crosslingual_pairs(versions: dict[str, Document], limits: PairLimits, rng: random.Random,
                       pivot: str = "en") -> list[PairRecord]:
    """Each non-pivot section -> the same section (same key) in the pivot language and in one other language."""
    out = []
    langs = sorted(versions)
    keyed = {lang: _sections_by_key(versions[lang]) for lang in langs}
    for lang in langs:
        if lang == pivot:
            continue
        for key, section in keyed[lang].items():
            text = _section_text(section, limits)
            if not text:
                continue
            partners = [other for other in langs if other != lang and key in keyed[other]]
            chosen = [p for p in partners if p == pivot]
            others = [p for p in partners if p != pivot]
            if others:
                chosen.append(rng.choice(others))
            for other in chosen:
                target = _section_text(keyed[other][key], limits)
                if target and target != text:
                    out.append(PairRecord(text, target, (), lang, other, f"{section_source(versions)}:xling"))
    return out


def section_source(versions: dict[str, Document]) -> str:
    return next(iter(versions.values())).source


def crosslingual_heading_pairs(versions: dict[str, Document], limits: PairLimits,
                               pivot: str = "en") -> list[PairRecord]:
    """A heading in one language -> the same section's text in the pivot language."""
    if pivot not in versions:
        return []
    target = _sections_by_key(versions[pivot])
    out = []
    for lang, doc in sorted(versions.items()):
        if lang == pivot:
            continue
        for section in doc.sections:
            match = target.get(section.key)
            if match is None or not _usable_heading(section, limits) or section.heading == match.heading:
                continue  # untranslated headings teach nothing cross-lingual
            text = _section_text(match, limits)
            if text:
                out.append(PairRecord(section.heading, text, (), lang, pivot, f"{doc.source}:xheading"))
    return out


def cpt_pairs(docs: Sequence[Document], limits: PairLimits = PairLimits(), seed: int = 0) -> list[PairRecord]:
    """All weak pairs of `docs` (see the module docstring), shuffled with `seed`."""
    rng = random.Random(f"cpt-{seed}")
    records: list[PairRecord] = []
    for doc in docs:
        records += heading_pairs(doc, limits) + title_pair(doc, limits) + sentence_pairs(doc, limits, rng)
    for _, versions in sorted(aligned(docs).items()):
        records += crosslingual_pairs(versions, limits, rng)
    rng.shuffle(records)
    return records


def finetune_pairs(docs: Sequence[Document], limits: PairLimits = PairLimits(), seed: int = 0) -> list[PairRecord]:
    """Heading -> section (same language) and heading -> the English section, shuffled with `seed`."""
    rng = random.Random(f"ft-{seed}")
    records: list[PairRecord] = []
    for doc in docs:
        records += heading_pairs(doc, limits, kind="ft-heading")
    for _, versions in sorted(aligned(docs).items()):
        records += crosslingual_heading_pairs(versions, limits)
    rng.shuffle(records)
    return records


@dataclass(frozen=True)
class LongDocument:
    """A whole page as one text (paragraphs, one per line) with the character span of each section."""

    doc_id: str
    source: str
    lang: str
    title: str
    text: str
    sections: tuple[dict, ...]  # {"key", "heading", "start", "end"}: text[start:end] is the section's text

    def to_dict(self) -> dict:
        return {"doc_id": self.doc_id, "source": self.source, "lang": self.lang, "title": self.title,
                "text": self.text, "chars": len(self.text), "sections": list(self.sections)}


def long_document(doc: Document) -> LongDocument:
    parts, spans, offset = [], [], 0
    for section in doc.sections:
        text = section.text()
        if not text:
            continue
        if parts:
            offset += 1  # the newline between sections
        spans.append({"key": section.key, "heading": section.heading, "start": offset, "end": offset + len(text)})
        parts.append(text)
        offset += len(text)
    return LongDocument(doc.doc_id, doc.source, doc.lang, doc.title, "\n".join(parts), tuple(spans))


def long_pairs(longs: Sequence[LongDocument], num_negatives: int = 2, seed: int = 0,
               min_heading_letters: int = 3) -> list[PairRecord]:
    """A section heading (or the title) -> the whole document; negatives: other long documents of the same
    language. One record per document (the heading drawn at random), `source` `<corpus>:long`."""
    rng = random.Random(f"long-{seed}")
    by_lang: dict[str, list[LongDocument]] = {}
    for doc in longs:
        by_lang.setdefault(doc.lang, []).append(doc)
    records = []
    for doc in longs:
        headings = [s["heading"] for s in doc.sections if letters(s["heading"]) >= min_heading_letters
                    and s["heading"] != doc.title]
        if not headings:
            continue
        others = [d.text for d in by_lang[doc.lang] if d is not doc]
        negatives = tuple(rng.sample(others, min(num_negatives, len(others))))
        records.append(PairRecord(rng.choice(headings), doc.text, negatives, doc.lang, doc.lang,
                                  f"{doc.source}:long"))
    return records
