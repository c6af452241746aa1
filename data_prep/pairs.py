"""Contrastive pairs: one record format, jsonl reading with errors that name file and line, and
hard-negative mining with any dense encoder behind `encode_fn(texts) -> [N, D]` normalised vectors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from data_prep.files import DataError, read_jsonl, scan_lines, write_jsonl

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], torch.Tensor]  # texts -> [N, D], rows L2-normalised
STRING_FIELDS = ("query", "positive", "query_lang", "doc_lang", "source")


@dataclass(frozen=True)
class PairRecord:
    """A query, its positive document and optional hard negatives, with language tags and provenance."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    query_lang: str = "und"
    doc_lang: str = "und"
    source: str = ""

    def to_dict(self) -> dict:
        return {**asdict(self), "negatives": list(self.negatives)}


def record_from_dict(row: dict, where: str) -> PairRecord:
    """Validate one decoded row; `where` ("file:line") goes into every error."""
    for name in ("query", "positive"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise DataError(f"{where}: field {name!r} must be a non-empty string, got {row.get(name)!r}")
    for name in STRING_FIELDS[2:]:
        if row.get(name) is not None and not isinstance(row[name], str):
            raise DataError(f"{where}: field {name!r} must be a string, got {type(row[name]).__name__}")
    negatives = row.get("negatives") or []
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        raise DataError(f"{where}: field 'negatives' must be a list of strings")
    unknown = set(row) - {*STRING_FIELDS, "negatives"}
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}")
    return PairRecord(query=row["query"], positive=row["positive"], negatives=tuple(negatives),
                      query_lang=row.get("query_lang") or "und", doc_lang=row.get("doc_lang") or "und",
                      source=row.get("source") or "")


def read_pairs(path: str | Path) -> list[PairRecord]:
    """Read a pairs jsonl through `datasets`; any bad record raises DataError naming file and line."""
    import datasets

    scan = scan_lines(path, jsonl=True, on_error="raise")  # UTF-8 and JSON syntax, with line numbers
    if not scan.record_lines:
        raise DataError(f"{path}: no records (empty file)")
    try:
        table = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:
        # pyarrow rejects e.g. a field whose type changes between rows, without saying where: find the line
        _validate_line_by_line(path)
        raise DataError(f"{path}: could not read as json lines ({type(err).__name__}: {err})") from err
    records = []
    for line, row in zip(scan.record_lines, table):
        records.append(record_from_dict({k: v for k, v in row.items() if v is not None}, f"{path}:{line}"))
    return records


def _validate_line_by_line(path: str | Path) -> None:
    for line, row in read_jsonl(path):
        record_from_dict(row, f"{path}:{line}")


def write_pairs(records: Sequence[PairRecord], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, [r.to_dict() for r in records])


# ---- selection ------------------------------------------------------------------------------------------
def source_matches(source: str, names: Sequence[str]) -> bool:
    """`source` is one of `names`, or a kind of one (`manpages:xheading` matches `manpages`)."""
    return any(source == name or source.startswith(f"{name}:") for name in names)


def select_pairs(records: Sequence[PairRecord], sources: Sequence[str] = (),
                 unique_queries: bool = False) -> list[PairRecord]:
    """The records a trainer keeps: those of `sources` (see `source_matches`; empty = every source), and with
    `unique_queries` only those whose query names one positive per document language in the kept records.

    A query paired with several texts of one language (a heading repeated across pages: "Options", "Syntax:")
    cannot tell them apart; the held-out sets drop such headings too (data_prep.heldout), so training on them
    teaches a task no evaluation asks. The same query with one positive in each of several languages (a
    heading -> its section, and -> the same section in English) is one answer, and is kept."""
    kept = [r for r in records if not sources or source_matches(r.source, sources)]
    if unique_queries:
        positives: dict[tuple[str, str], set[str]] = {}
        for r in kept:
            positives.setdefault((normalise(r.query), r.doc_lang), set()).add(normalise(r.positive))
        kept = [r for r in kept if len(positives[(normalise(r.query), r.doc_lang)]) == 1]
    return kept


# ---- hard-negative mining ------------------------------------------------------------------------------
@dataclass
class MiningStats:
    records: int = 0
    short: int = 0  # records that got fewer negatives than asked (small corpus or narrow window)
    skipped_as_positive: int = 0  # candidates dropped as known positives (linked to the query by the pairs) / the query
    negatives: dict = field(default_factory=dict)  # number of negatives -> records


def normalise(text: str) -> str:
    """The form in which two texts count as the same document: whitespace runs collapsed, case folded."""
    return " ".join(text.split()).casefold()


def encode_all(texts: Sequence[str], encode_fn: EncodeFn, batch_size: int = 256, desc: str = "encode",
               progress: bool = True) -> torch.Tensor:
    """Encode in batches and check the protocol (2-D, one row per text, unit norm)."""
    parts = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
        chunk = list(texts[start:start + batch_size])
        vectors = torch.as_tensor(encode_fn(chunk)).float()
        if vectors.dim() != 2 or vectors.shape[0] != len(chunk):
            raise ValueError(f"encode_fn: expected [{len(chunk)}, D], got {tuple(vectors.shape)}")
        parts.append(vectors)
    vectors = torch.cat(parts)  # [N, D]
    norms = vectors.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(f"encode_fn: vectors must be L2-normalised (norms {norms.min():.3f}..{norms.max():.3f})")
    return vectors


def linked_texts(records: Sequence[PairRecord]) -> dict[str, frozenset[str]]:
    """Normalised text -> every text the pairs link it to, itself included: the connected components of the
    graph whose edges are (query, positive). Translation and paraphrase data pair each text with only a few of
    its equivalents (de->ko, hi->en, ...), so "not this record's positive" is no proof of "not relevant": a
    mined negative from the query's own component is an unlabelled positive, and training on it teaches the
    model that translations do not match."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]  # path halving
            key = parent[key]
        return key

    for r in records:
        a, b = root(normalise(r.query)), root(normalise(r.positive))
        if a != b:
            parent[a] = b
    members: dict[str, set[str]] = {}
    for key in list(parent):
        members.setdefault(root(key), set()).add(key)
    frozen = {top: frozenset(keys) for top, keys in members.items()}
    return {key: frozen[root(key)] for key in parent}


def equivalence_key(text: str, linked: dict[str, frozenset[str]]) -> str:
    """One name for every text of `text`'s component in `linked` (its smallest member), or the normalised text
    itself when the pairs never name it: equal names = known to match, never each other's negative."""
    key = normalise(text)
    return min(linked[key]) if key in linked else key


def mine_hard_negatives(records: Sequence[PairRecord], corpus: Sequence[str], encode_fn: EncodeFn,
                        num_negatives: int = 8, rank_window: tuple[int, int] = (0, 100),
                        batch_size: int = 256, progress: bool = True,
                        exclude_linked: bool = True) -> tuple[list[PairRecord], MiningStats]:
    """Give every record `num_negatives` hard negatives from `corpus` by dense search.

    Candidates are ranked by cosine similarity to the query; known positives are removed first (whitespace/
    case-insensitive): the query itself, its positives, and with `exclude_linked` every text the pairs link
    to it (see `linked_texts`); then the first `num_negatives` candidates whose rank lies in `[start, end)`
    are taken. Skipping the top ranks (start > 0) avoids unlabelled positives the pairs do not name.
    """
    start, end = rank_window
    if not 0 <= start < end:
        raise ValueError(f"rank_window: expected 0 <= start < end, got {rank_window}")
    unique_corpus = list(dict.fromkeys(corpus))  # exact duplicates would fill the window with one text
    corpus_keys = [normalise(t) for t in unique_corpus]
    doc_vectors = encode_all(unique_corpus, encode_fn, batch_size, "encode corpus", progress)  # [N, D]
    query_vectors = encode_all([r.query for r in records], encode_fn, batch_size, "encode queries", progress)
    if exclude_linked:
        linked = linked_texts(records)
        known_positives = {r.query: linked[normalise(r.query)] for r in records}
    else:  # the same query may have several positive records: none of them is a negative
        known_positives = {}
        for r in records:
            known_positives.setdefault(r.query, set()).add(normalise(r.positive))
    stats = MiningStats(records=len(records))
    mined = []
    depth = min(len(unique_corpus), end + 16)
    for first in tqdm(range(0, len(records), batch_size), desc="search", disable=not progress):
        scores = query_vectors[first:first + batch_size] @ doc_vectors.T  # [Q, N]
        top = scores.topk(depth, dim=1).indices.tolist()
        for row, (record, ranked) in enumerate(zip(records[first:first + batch_size], top)):
            excluded = known_positives[record.query] | {normalise(record.query)}
            kept = [i for i in ranked if corpus_keys[i] not in excluded]
            stats.skipped_as_positive += len(ranked) - len(kept)
            if len(kept) < end and depth < len(unique_corpus):
                # exclusions ate the margin: rank the whole corpus for this query
                ranked = scores[row].argsort(descending=True).tolist()
                kept = [i for i in ranked if corpus_keys[i] not in excluded]
            negatives = tuple(unique_corpus[i] for i in kept[start:end][:num_negatives])
            stats.short += len(negatives) < num_negatives
            stats.negatives[len(negatives)] = stats.negatives.get(len(negatives), 0) + 1
            mined.append(replace(record, negatives=negatives))
    return mined, stats


def hashing_encoder(dim: int = 512, ngram: int = 3) -> EncodeFn:
    """A model-free `encode_fn` (hashed character n-grams, L2-normalised) for tests and smoke runs,
    until the trained encoder's `encode()` is plugged in."""
    import zlib

    def encode(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), dim)
        for row, text in enumerate(texts):
            padded = f" {' '.join(text.casefold().split())} "
            for i in range(max(1, len(padded) - ngram + 1)):
                out[row, zlib.crc32(padded[i:i + ngram].encode()) % dim] += 1.0
        return torch.nn.functional.normalize(out, dim=1)

    return encode
