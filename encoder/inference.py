"""Inference API: `encode()` texts with a TRM and `rerank()` / `score_pairs()` with a cross-encoder.

Inputs of any length are tokenised once (no specials), truncated to the model's budget (reported in one
warning per call, never an exception), sorted by length into token-budget batches of packed sequences
(no padding; `data_prep.batching` plans them), and the outputs are put back in input order. Empty and
whitespace-only strings become `<s></s>` and still get an embedding; lone surrogates (what Python gives for
undecodable bytes with `surrogateescape`) become U+FFFD. A non-string (None) is a TypeError naming its index.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from data_prep.batching import TokenBudgetBatchSampler, pack
from data_prep.tokenizer import backend_tokenizer

from .batch import UnpaddedBatch
from .export.text_input import checked_text, checked_texts
from .heads import Reranker, SparseEmbedding, TextRepresentationModel, fit_sparse_statistics

DEFAULT_BATCH_TOKENS = 16384


@dataclass
class Encoded:
    dense: Tensor | None  # [N, D] float32, L2-normalised (D = the Matryoshka `dim` if given)
    sparse: SparseEmbedding | None  # id-level weights of the N texts, for `sparse_scores`
    sparse_ids: list[dict[int, float]] | None  # token id -> weight
    sparse_tokens: list[dict[str, float]] | None  # decoded token -> weight (max over ids decoding alike)
    num_truncated: int  # texts cut to the length budget


def _budget(model: torch.nn.Module, max_length: int | None) -> int:
    limit = model.config.max_position_embeddings
    return limit if max_length is None else min(max_length, limit)


def _warn_truncated(count: int, total: int, budget: int, what: str) -> None:
    if count:  # one warning per call, however many inputs were cut
        warnings.warn(f"{count} of {total} {what} exceeded {budget} tokens and were truncated", stacklevel=3)


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    """`<s> text </s>` ids cut to `max_length`, and how many texts were cut."""
    backend = backend_tokenizer(tokenizer)
    room = max_length - backend.num_special_tokens_to_add(False)
    encodings = backend.encode_batch(checked_texts(texts, "texts"), add_special_tokens=False)
    truncated = 0
    out = []
    for enc in encodings:
        if len(enc.ids) > room:
            enc.truncate(room)
            truncated += 1
        out.append(backend.post_process(enc, None, add_special_tokens=True).ids)
    return out, truncated


def tokenize_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> tuple[list[list[int]], int]:
    """The tokenizer's pair template (`<s> q </s></s> d </s>` for XLM-R) within `max_length`.

    The document is cut first; the query only when it would leave the document less than half the room.
    """
    backend = backend_tokenizer(tokenizer)
    room = max_length - backend.num_special_tokens_to_add(True)
    query_texts, doc_texts = _checked_pairs(pairs)
    queries = backend.encode_batch(query_texts, add_special_tokens=False)
    docs = backend.encode_batch(doc_texts, add_special_tokens=False)
    truncated = 0
    out = []
    for q, d in zip(queries, docs):
        if len(q.ids) + len(d.ids) > room:
            truncated += 1
            q_keep = min(len(q.ids), room - min(len(d.ids), room // 2))
            q.truncate(q_keep)
            d.truncate(room - q_keep)
        out.append(backend.post_process(q, d, add_special_tokens=True).ids)
    return out, truncated


def _checked_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    queries, docs = [], []
    for index, pair in enumerate(pairs):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"pairs[{index}]: expected a (query, document) pair, got {type(pair).__name__}")
        queries.append(checked_text(pair[0], f"pairs[{index}][0]"))
        docs.append(checked_text(pair[1], f"pairs[{index}][1]"))
    return queries, docs


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped by length (sorted) into batches of at most `batch_tokens` tokens."""
    if len(lengths) == 0:
        return []
    budget = max(batch_tokens, max(lengths))
    sampler = TokenBudgetBatchSampler(lengths, budget, shuffle=False, sort_window=len(lengths))
    return sampler.all_batches(0)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _packed(sequences: list[list[int]]) -> UnpaddedBatch:
    return UnpaddedBatch.from_packed(*pack(sequences))


def run_batches(model: torch.nn.Module, sequences: list[list[int]], batch_tokens: int, fn,
                collate: Callable[[list[list[int]]], UnpaddedBatch] = _packed) -> None:
    """Call `fn(indices, output)` for every length-sorted batch (`collate` packs it; e.g. an MLM collator adds
    masked labels), in eval mode without grad; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    try:
        with torch.inference_mode():
            for indices in length_batches([len(s) for s in sequences], batch_tokens):
                fn(indices, model(collate([sequences[i] for i in indices]).to(device)))
    finally:
        model.train(was_training)


@contextmanager
def collection_statistics(model: TextRepresentationModel, tokenizer, documents: Sequence[str]) -> Iterator[None]:
    """Inside the block the sparse head scores with the statistics of `documents`, the collection searched: its
    idf prior and mean text length re-estimated there (`heads.fit_sparse_statistics`), as BM25 takes its idf
    from the index. Encode the queries and the documents of one search inside one block; the trained values
    come back after it."""
    head = model.head
    saved = head.token_prior.clone(), head.mean_text_length.clone()
    texts = checked_texts(documents, "documents")
    encodings = backend_tokenizer(tokenizer).encode_batch(texts, add_special_tokens=False)
    fit_sparse_statistics(head, [e.ids for e in encodings])
    try:
        yield
    finally:
        with torch.no_grad():
            head.token_prior.copy_(saved[0])
            head.mean_text_length.copy_(saved[1])


def encode(model: TextRepresentationModel, tokenizer, texts: Sequence[str], *, dim: int | None = None,
           dense: bool = True, sparse: bool = False, sparse_format: str = "both", max_length: int | None = None,
           batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Encoded:
    """Embed `texts` with the TRM; outputs are in input order.

    dim            Matryoshka width of the dense vectors (None = full width)
    sparse_format  "ids", "tokens" or "both": which lexical dicts to build (the tensor form is always kept)
    """
    if sparse_format not in ("ids", "tokens", "both"):
        raise ValueError(f"sparse_format: expected ids, tokens or both, got {sparse_format!r}")
    budget = _budget(model, max_length)
    sequences, truncated = tokenize_texts(tokenizer, texts, budget)
    _warn_truncated(truncated, len(texts), budget, "texts")
    n = len(sequences)
    width = dim or model.config.hidden_size
    dense_out = torch.zeros(n, width) if dense else None
    parts: list[tuple[Tensor, SparseEmbedding]] = []

    def collect(indices: list[int], out) -> None:
        rows = torch.tensor(indices)
        if dense_out is not None:
            dense_out[rows] = (out.dense_at(dim) if dim else out.dense).float().cpu()
        if sparse:
            parts.append((rows, out.sparse))

    run_batches(model, sequences, batch_tokens, collect)
    sparse_emb = _merge_sparse(parts, n) if sparse else None
    ids = sparse_emb.to_dicts() if sparse_emb is not None and sparse_format in ("ids", "both") else None
    tokens = (_decode_dicts(sparse_emb.to_dicts(), tokenizer)
              if sparse_emb is not None and sparse_format in ("tokens", "both") else None)
    return Encoded(dense=dense_out, sparse=sparse_emb, sparse_ids=ids, sparse_tokens=tokens, num_truncated=truncated)


def _merge_sparse(parts: list[tuple[Tensor, SparseEmbedding]], n: int) -> SparseEmbedding:
    """Per-batch sparse triples -> one `SparseEmbedding` whose sequence index is the input position."""
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return SparseEmbedding(empty, empty, torch.zeros(0), n)
    seq = torch.cat([rows[s.sequence_index.cpu()] for rows, s in parts])
    return SparseEmbedding(sequence_index=seq, token_ids=torch.cat([s.token_ids.cpu() for _, s in parts]),
                           weights=torch.cat([s.weights.float().cpu() for _, s in parts]), batch_size=n)


def _decode_dicts(dicts: list[dict[int, float]], tokenizer) -> list[dict[str, float]]:
    cache: dict[int, str] = {}
    out = []
    for weights in dicts:
        decoded: dict[str, float] = {}
        for token_id, weight in weights.items():
            if token_id not in cache:
                cache[token_id] = tokenizer.decode([token_id])
            key = cache[token_id]  # "▁word" and "word" decode alike: keep the larger weight
            decoded[key] = max(decoded.get(key, 0.0), weight)
        out.append(decoded)
    return out


def score_pairs(model: Reranker, tokenizer, pairs: Sequence[tuple[str, str]], *, max_length: int | None = None,
                batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Tensor:
    """Cross-encoder logits `[N]` for (query, document) pairs, in input order."""
    budget = _budget(model, max_length)
    sequences, truncated = tokenize_pairs(tokenizer, pairs, budget)
    _warn_truncated(truncated, len(pairs), budget, "query-document pairs")
    scores = torch.zeros(len(sequences))

    def collect(indices: list[int], logits: Tensor) -> None:
        scores[torch.tensor(indices)] = logits.float().cpu()

    run_batches(model, sequences, batch_tokens, collect)
    return scores


def rerank(model: Reranker, tokenizer, query: str, documents: Sequence[str], *, max_length: int | None = None,
           batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Tensor:
    """Relevance logits `[len(documents)]` of each document for `query` (input order; sort them yourself)."""
    query = checked_text(query, "query")
    documents = checked_texts(documents, "documents")  # errors name the document, not the pair
    return score_pairs(model, tokenizer, [(query, d) for d in documents], max_length=max_length,
                       batch_tokens=batch_tokens)
