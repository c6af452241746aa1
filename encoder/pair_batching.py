"""Pair data for the retrieval trainers (TRM and reranker): records grouped and drawn per step, documents
indexed once with the keys that mark false negatives, hard negatives mined with a trained TRM, and long
documents batched by length. A step's batch is a pure function of (seed, step, rank), so resuming needs the
step only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_prep.pairs import (
    PairRecord,
    equivalence_key,
    linked_texts,
    mine_hard_negatives,
    normalise,
    read_pairs,
    select_pairs,
)
from data_prep.sampling import sampling_probabilities
from data_prep.tokenizer import special_ids

from .artifacts import load_final
from .inference import encode, tokenize_texts
from .training import require


@dataclass
class PairDataConfig:
    pairs: str = "runs/pairs.jsonl"  # data_prep.pairs jsonl (query, positive, negatives, langs, source)
    sources: list[str] = field(default_factory=list)  # train on these sources only ("manpages" = manpages:*); [] all
    unique_queries: bool = False  # drop records whose query names several different positives
    tokenizer: str = "runs/tokenizer"  # a saved HF tokenizer directory (data_prep.tokenizer)
    max_query_length: int = 512  # mGTE CPT: queries 512, documents 1024 tokens
    max_doc_length: int = 1024
    batch_size: int = 64  # queries per rank per step
    num_hard_negatives: int = 0  # per query; 0 = in-batch negatives only (CPT)
    group_by: str = "source"  # one group per batch: source, query_lang, or none
    alpha: float = 0.5  # group sampling ∝ size^α (mGTE's rule)
    sub_batch_tokens: int = 16384  # gradient-cache sub-batch budget (tokens)
    grad_cache: bool = True  # False: one forward over the whole batch (with model.gradient_checkpointing if set)
    negatives_from: str = ""  # a TRM `final/` dir: mine hard negatives with it before training
    mining_rank_window: tuple[int, int] = (3, 30)  # skip the top ranks (likely unlabelled positives)
    long_pairs: str = ""  # data_prep.longdoc pairs jsonl: query -> the whole long document holding it
    use_long_pairs: bool = True  # False: ignore long_pairs (to measure what they add)
    long_every: int = 2  # every n-th step is a long-document batch (1 = all steps)
    long_batch_tokens: int = 32768  # a long batch holds as many queries as their documents fit in this
    max_long_doc_length: int = 8192

    def __post_init__(self) -> None:
        validate_pair_data(self, ("max_query_length", "max_doc_length", "max_long_doc_length"))


def validate_pair_data(data: Any, length_fields: Sequence[str]) -> None:
    """Checks shared by the TRM's and the reranker's `data:` sections (field names are theirs)."""
    for name in length_fields:
        require(getattr(data, name) >= 3, f"data.{name}", "must be >= 3 (<s>, a token, </s>)", getattr(data, name))
    require(data.batch_size >= 1, "data.batch_size", "must be >= 1", data.batch_size)
    require(data.num_hard_negatives >= 0, "data.num_hard_negatives", "must be >= 0", data.num_hard_negatives)
    require(data.group_by in ("source", "query_lang", "none"), "data.group_by", "expected source, query_lang or none",
            data.group_by)
    require(data.alpha >= 0, "data.alpha", "must be >= 0", data.alpha)
    require(data.sub_batch_tokens >= 1, "data.sub_batch_tokens", "must be >= 1", data.sub_batch_tokens)
    low, high = data.mining_rank_window
    require(0 <= low < high, "data.mining_rank_window", "expected [start, end) with 0 <= start < end",
            list(data.mining_rank_window))
    require(data.long_every >= 1, "data.long_every", "must be >= 1", data.long_every)
    require(data.long_batch_tokens >= 1, "data.long_batch_tokens", "must be >= 1", data.long_batch_tokens)


def text_key(text: str) -> int:
    """A 63-bit key of the normalised text: equal keys = the same document (a false negative to mask)."""
    digest = hashlib.blake2b(normalise(text).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class PairDocuments:
    """Every distinct document of the pair records (positives, then mined negatives), indexed once."""
    texts: list[str]
    positive: np.ndarray  # [records] row of each record's positive
    negatives: list[list[int]]  # [records] rows of each record's mined negatives
    keys: np.ndarray  # [documents] int64, equal for documents the pairs link (see `data_prep.pairs.linked_texts`)

    @classmethod
    def of(cls, records: Sequence[PairRecord]) -> PairDocuments:
        """In translation data another query's positive is often a translation of this query's: equal keys mark
        it a false negative to mask, not a document to push away; unlinked documents keep a key of their own."""
        texts = list(dict.fromkeys([r.positive for r in records] + [n for r in records for n in r.negatives]))
        row = {text: i for i, text in enumerate(texts)}
        linked = linked_texts(records)
        return cls(texts=texts, positive=np.array([row[r.positive] for r in records]),
                   negatives=[[row[n] for n in r.negatives] for r in records],
                   keys=np.array([text_key(equivalence_key(t, linked)) for t in texts], dtype=np.int64))


@dataclass
class PairBatch:
    queries: list[list[int]]  # [b] token ids
    positives: list[list[int]]  # [b]
    negatives: list[list[int]]  # [m] hard negatives of all queries (any number)
    positive_keys: Tensor  # [b] int64 text keys
    negative_keys: Tensor  # [m]
    lexical_overlap: Tensor | None = None  # [b] bool: query and positive share a non-special token

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for part in (self.queries, self.positives, self.negatives) for s in part)


class GroupedRecords:
    """Record indices grouped by `group_by`, drawn ∝ size^α; a batch is a pure function of (seed, step, rank),
    so resuming needs the step only. The group is drawn the same on every rank (a global batch is one
    source); the records differ per rank."""

    def __init__(self, records: Sequence[PairRecord], group_by: str, alpha: float, batch_size: int, seed: int,
                 rank: int = 0) -> None:
        if not records:
            raise ValueError("data.pairs: no records")
        if group_by not in ("source", "query_lang", "none"):
            raise ValueError(f"data.group_by: expected source, query_lang or none, got {group_by!r}")
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault({"source": r.source, "query_lang": r.query_lang, "none": ""}[group_by], []).append(i)
        self.names = sorted(groups)
        self.groups = [np.array(groups[g]) for g in self.names]
        probs = sampling_probabilities({g: len(groups[g]) for g in self.names}, alpha)
        self.probs = np.array([probs[g] for g in self.names])
        self.batch_size, self.seed, self.rank = batch_size, seed, rank

    def group_at(self, step: int) -> int:
        """The index (into `names`) of the group every rank draws from at `step`."""
        return int(np.random.default_rng([self.seed, step]).choice(len(self.groups), p=self.probs))

    def pick(self, step: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """(picked record indices, members of their group, this rank's generator for the step)."""
        group = self.group_at(step)
        rng = np.random.default_rng([self.seed, step, self.rank + 1])
        members = self.groups[group]
        return rng.choice(members, size=min(self.batch_size, len(members)), replace=False), members, rng


def pick_negatives(own: int, mined: Sequence[int], hard: int, random: int, members_docs: np.ndarray,
                   doc_keys: np.ndarray, rng: np.random.Generator) -> list[int]:
    """`hard` of the mined negatives (topped up with random ones when short) + `random` random documents of
    the same group, never one with the key of the record's own positive `own` (itself or a linked text)."""
    chosen = [int(c) for c in rng.choice(mined, size=min(hard, len(mined)), replace=False)] if mined else []
    wanted = hard + random
    for _ in range(100 * max(wanted, 1)):
        if len(chosen) >= wanted:
            break
        candidate = int(rng.choice(members_docs))
        if doc_keys[candidate] != doc_keys[own]:
            chosen.append(candidate)
    return chosen


class PairBatches:
    """Tokenised queries and documents (once), served as `PairBatch`es of one group each."""

    def __init__(self, records: Sequence[PairRecord], tokenizer, config: PairDataConfig, seed: int,
                 rank: int = 0) -> None:
        self.config = config
        self.sampler = GroupedRecords(records, config.group_by, config.alpha, config.batch_size, seed, rank)
        queries, _ = tokenize_texts(tokenizer, [r.query for r in records], config.max_query_length)
        docs = PairDocuments.of(records)
        doc_ids, _ = tokenize_texts(tokenizer, docs.texts, config.max_doc_length)
        self.query_ids, self.doc_ids = queries, doc_ids
        self.positive, self.negatives, self.doc_keys = docs.positive, docs.negatives, torch.from_numpy(docs.keys)
        specials = set(special_ids(tokenizer).all_special)
        self.lexical = np.array([bool((set(q) & set(self.doc_ids[d])) - specials)
                                 for q, d in zip(self.query_ids, self.positive)])

    def batch(self, step: int) -> PairBatch:
        picked, members, rng = self.sampler.pick(step)
        negatives: list[int] = []
        if self.config.num_hard_negatives:
            for i in picked:
                negatives += pick_negatives(int(self.positive[i]), self.negatives[i], self.config.num_hard_negatives,
                                            0, self.positive[members], self.doc_keys.numpy(), rng)
        positives = self.positive[picked]
        return PairBatch(queries=[self.query_ids[i] for i in picked], positives=[self.doc_ids[d] for d in positives],
                         negatives=[self.doc_ids[d] for d in negatives], positive_keys=self.doc_keys[positives],
                         negative_keys=self.doc_keys[negatives] if negatives else torch.zeros(0, dtype=torch.long),
                         lexical_overlap=torch.from_numpy(self.lexical[picked]))


LENGTH_BUCKETS = (512, 1024, 2048, 3072, 8192)  # mGTE Table 12's length edges (tokens)


class LengthBuckets:
    """Long-document records batched by length (mGTE's dynamic batching): records are bucketed by their
    positive's token length, a step draws one bucket (∝ size^α, the same on every rank) and takes as many
    queries as `batch_tokens` holds for that bucket's longest documents. `make(records, batch_size)` builds a
    per-bucket batcher with `.batch(step)` (PairBatches or the reranker's groups); batches stay a pure
    function of the step, so resume is unchanged."""

    def __init__(self, records: Sequence[PairRecord], doc_lengths: Sequence[int], docs_per_query: int,
                 batch_tokens: int, alpha: float, seed: int, make: Callable[[list[PairRecord], int], Any]) -> None:
        buckets: dict[int, list[PairRecord]] = {}
        for record, n in zip(records, doc_lengths):
            buckets.setdefault(next((e for e in LENGTH_BUCKETS if n <= e), max(n, LENGTH_BUCKETS[-1])), []).append(
                record)
        self.edges = sorted(buckets)
        self.batchers = [make(buckets[e], max(1, batch_tokens // (e * docs_per_query))) for e in self.edges]
        probs = sampling_probabilities({e: len(buckets[e]) for e in self.edges}, alpha)
        self.probs = np.array([probs[e] for e in self.edges])
        self.seed = seed

    def batch(self, step: int) -> Any:
        which = np.random.default_rng([self.seed, step, 1 << 20]).choice(len(self.edges), p=self.probs)
        return self.batchers[which].batch(step)


def long_buckets(config: Any, tokenizer, max_length: int, group_size: int, seed: int,
                 make: Callable[[list, int], Any]) -> LengthBuckets | None:
    """Length buckets over `config.long_pairs` (the whole documents, tokenized up to `max_length`), or None when
    it is unset or `config.use_long_pairs` is off. `make(records, batch_size)` builds one bucket's batcher."""
    if not config.long_pairs or not config.use_long_pairs:
        return None
    records = read_pairs(config.long_pairs)
    lengths = [len(ids) for ids in tokenize_texts(tokenizer, [r.positive for r in records], max_length)[0]]
    return LengthBuckets(records, lengths, group_size, config.long_batch_tokens, config.alpha, seed, make)


def long_pair_batches(config: PairDataConfig, tokenizer, seed: int, rank: int = 0) -> LengthBuckets | None:
    """The TRM's long-document batches, or None when `data.long_pairs` is unset or `use_long_pairs` is off."""
    long_config = replace(config, group_by="none", max_doc_length=config.max_long_doc_length)
    return long_buckets(config, tokenizer, config.max_long_doc_length, 1 + config.num_hard_negatives, seed,
                        lambda recs, size: PairBatches(recs, tokenizer, replace(long_config, batch_size=size),
                                                       seed, rank))


def interleave(short: Any, long: Any | None, every: int) -> Callable[[int], Any]:
    """step -> batch: every `every`-th step from `long` (when given), the others from `short`."""
    if every < 1:
        raise ValueError(f"data.long_every: must be >= 1, got {every}")
    return lambda step: long.batch(step) if long is not None and step % every == every - 1 else short.batch(step)


def mine_negatives(records: list[PairRecord], model_dir: str, num_negatives: int, window: tuple[int, int],
                   device: torch.device) -> list[PairRecord]:
    """Hard negatives for every record from the documents of the pair set, searched with a trained TRM."""
    model, tokenizer, _ = load_final(model_dir)
    model.to(device)
    corpus = list(dict.fromkeys(r.positive for r in records))

    def encode_fn(texts: list[str]) -> Tensor:
        return encode(model, tokenizer, texts).dense

    mined, stats = mine_hard_negatives(records, corpus, encode_fn, num_negatives, window, progress=False)
    print(f"mined hard negatives with {model_dir}: {stats.negatives} (negatives -> records), short {stats.short}")
    return mined


def load_records(config: Any, device: torch.device) -> list[PairRecord]:
    """The pair records of `config.pairs` (a PairDataConfig or the reranker's data section) that `data.sources` and
    `data.unique_queries` keep (data_prep.pairs.select_pairs), with hard negatives mined by the TRM
    `config.negatives_from` when one is named and negatives are wanted."""
    records = read_pairs(config.pairs)
    kept = select_pairs(records, config.sources, config.unique_queries)
    if not kept and not select_pairs(records, config.sources):
        raise ValueError(f"data.sources: no record of {config.pairs} is from {config.sources} "
                         f"(its sources: {sorted({r.source for r in records})})")
    if not kept:
        raise ValueError(f"data.unique_queries: every query of {config.pairs} (data.sources={config.sources}) "
                         f"names several texts of one language; nothing is left to train on")
    if len(kept) < len(records):
        print(f"pairs: kept {len(kept)} of {len(records)} records (data.sources={config.sources}, "
              f"data.unique_queries={config.unique_queries})")
    records = kept
    if config.negatives_from and config.num_hard_negatives:
        records = mine_negatives(records, config.negatives_from, config.num_hard_negatives,
                                 tuple(config.mining_rank_window), device)
    return records
