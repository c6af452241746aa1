"""Task heads on top of the packed encoder output, and the three task models.

- `MLMHead`: BERT transform + decoder (the embedding table unless `model.tie_word_embeddings` is off), evaluated
  **only on masked positions** (never `[T, vocab]`).
- `TRMHead`: dense = L2-normalised CLS (or mean) state with Matryoshka truncation; sparse = per-token ReLU(linear)
  weights kept as `(sequence, token id, weight)` triples, max-reduced over repeated ids, specials dropped.
- `RerankerHead`: one logit from the CLS (or mean: model.pooling) state, optionally through the BERT tanh pooler, as
  released.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import IGNORE_INDEX, UnpaddedBatch
from .config import ModelConfig
from .kernel_switches import ACTIVATIONS
from .model import Encoder


# ---- MLM ------------------------------------------------------------------------------------------------
class MLMHead(nn.Module):
    def __init__(self, config: ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS["gelu"]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.tie_word_embeddings:
            self.decoder_weight = word_embeddings.weight  # [V, H], the embedding table itself
        else:
            self.decoder_weight = nn.Parameter(torch.empty_like(word_embeddings.weight))
            nn.init.normal_(self.decoder_weight, std=config.initializer_range)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden `[M, H]` of the masked positions only -> logits `[M, V]`."""
        return F.linear(self.norm(self.act(self.dense(hidden))), self.decoder_weight, self.bias)


@dataclass
class MLMOutput:
    loss: Tensor  # mean cross-entropy over masked tokens
    logits: Tensor  # [M, V] for the M masked positions, in packed order
    labels: Tensor  # [M]
    num_masked: int
    num_correct: Tensor  # scalar tensor: argmax hits among the masked positions


class MaskedLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = MLMHead(config, self.encoder.embeddings.word_embeddings)

    def forward(self, batch: UnpaddedBatch) -> MLMOutput:
        if batch.labels is None:
            raise ValueError("labels: MaskedLM needs a batch with MLM labels (IGNORE_INDEX where unmasked)")
        masked = (batch.labels != IGNORE_INDEX).nonzero().squeeze(1)  # [M]
        labels = batch.labels[masked]
        # only the masked rows go through the last layer's feed-forward and the head
        logits = self.head(self.encoder(batch, output_rows=masked))  # [M, V]
        if labels.numel() == 0:  # nothing masked: a zero loss that still touches the graph
            loss = logits.sum() * 0.0
        else:
            loss = F.cross_entropy(logits.float(), labels, reduction="mean")
        correct = (logits.argmax(dim=-1) == labels).sum()
        return MLMOutput(loss=loss, logits=logits, labels=labels, num_masked=labels.numel(), num_correct=correct)


# ---- TRM: dense + sparse ------------------------------------------------------------------------------------
@dataclass
class SparseEmbedding:
    """Lexical weights of B sequences as max-reduced `(sequence, token id, weight)` triples."""

    sequence_index: Tensor  # [N] int64
    token_ids: Tensor  # [N] int64
    weights: Tensor  # [N] float, > 0
    batch_size: int

    def to_dicts(self) -> list[dict[int, float]]:
        out: list[dict[int, float]] = [{} for _ in range(self.batch_size)]
        for seq, tok, w in zip(self.sequence_index.tolist(), self.token_ids.tolist(), self.weights.tolist()):
            out[seq][tok] = w
        return out

    def select(self, rows: Tensor) -> SparseEmbedding:
        """The sparse vectors of sequences `rows` (in that order)."""
        remap = torch.full((self.batch_size,), -1, dtype=torch.long, device=self.token_ids.device)
        remap[rows] = torch.arange(len(rows), device=rows.device)
        new_seq = remap[self.sequence_index]
        keep = new_seq >= 0
        return SparseEmbedding(new_seq[keep], self.token_ids[keep], self.weights[keep], len(rows))


def sparse_scores(queries: SparseEmbedding, docs: SparseEmbedding) -> Tensor:
    """`[Bq, Bd]` of sum over shared token ids of w_q * w_d (differentiable).

    Works over the union U of token ids present in the two sets, so memory is `[B, U]`, never `[B, vocab]`.
    """
    all_ids = torch.cat([queries.token_ids, docs.token_ids])
    vocab_ids, inverse = torch.unique(all_ids, return_inverse=True)
    q_cols, d_cols = inverse[: len(queries.token_ids)], inverse[len(queries.token_ids):]
    dtype = torch.promote_types(queries.weights.dtype, docs.weights.dtype)
    q_dense = queries.weights.new_zeros(queries.batch_size, len(vocab_ids), dtype=dtype)
    q_dense = q_dense.index_put((queries.sequence_index, q_cols), queries.weights.to(dtype))
    d_dense = docs.weights.new_zeros(docs.batch_size, len(vocab_ids), dtype=dtype)
    d_dense = d_dense.index_put((docs.sequence_index, d_cols), docs.weights.to(dtype))
    return q_dense @ d_dense.T


@dataclass
class TRMOutput:
    dense: Tensor  # [B, D] L2-normalised pooled embedding (full width; truncate with `dense_at`)
    sparse: SparseEmbedding
    cls_hidden: Tensor  # [B, H] the pooled state before normalisation (CLS or mean: model.pooling)

    def dense_at(self, dim: int) -> Tensor:
        """Matryoshka: the first `dim` dimensions, re-normalised."""
        return F.normalize(self.cls_hidden[:, :dim].float(), dim=-1)


class TRMHead(nn.Module):
    def __init__(self, config: ModelConfig, special_token_ids: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.sparse_linear = nn.Linear(config.hidden_size, 1)
        # Every token starts with weight ~1 (the plain overlap count) rather than ReLU of a random projection:
        # with the default init half the tokens start at 0 and get no gradient, and on cross-lingual pairs the
        # lexical InfoNCE then drives the rest below 0 within a few dozen steps (a dead head). With
        # model.sparse_init=ones W starts at 0 and the factor at exactly 1 (its gradient, a sum of hidden states,
        # still tells tokens apart); "random" adds a small random W, about +-0.3 on the factor at width 256.
        std = config.initializer_range if config.sparse_init == "random" else 0.0
        nn.init.normal_(self.sparse_linear.weight, std=std)
        nn.init.ones_(self.sparse_linear.bias)
        self.vocab_size = config.vocab_size
        self.pooling = config.pooling
        # a fixed per-token-id factor on the lexical weights (ones = none; `idf_prior` gives an IDF-like one):
        # what BM25 knows from the start (a word in every document matches nothing in particular), stored with
        # the weights so every export applies the same
        self.register_buffer("token_prior", torch.ones(config.vocab_size))
        # BM25's term-frequency saturation and length normalisation (ModelConfig.sparse_tf_k1, sparse_length_b);
        # the mean length of the training documents in non-special tokens (0: unknown, no length normalisation)
        self.tf_k1, self.length_b = config.sparse_tf_k1, config.sparse_length_b
        self.register_buffer("mean_text_length", torch.zeros(()))
        self.special_ids = tuple(sorted(set(special_token_ids)))
        self.reset_special_token_ids()

    # buffers a checkpoint may predate, with their neutral value: no prior (ones), no length normalisation (0)
    DEFAULTED = {"token_prior": torch.ones_like, "mean_text_length": torch.zeros_like}
    defaulted_keys = tuple(DEFAULTED)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints and mGTE weights from before these buffers
        for name, neutral in self.DEFAULTED.items():
            state_dict.setdefault(prefix + name, neutral(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_special_token_ids(self) -> None:
        """(Re)build the `special_token_ids` buffer from `special_ids`. CLS/EOS/PAD/UNK (and MASK) carry no lexical
        meaning. A non-persistent buffer (it follows .to(device), never stored), so loaders that build modules on
        the meta device (transformers 5) must call this after loading: export/hf_modeling.py does."""
        device = self.special_token_ids.device if hasattr(self, "special_token_ids") else None
        self.register_buffer("special_token_ids", torch.tensor(self.special_ids, dtype=torch.long, device=device),
                             persistent=False)

    def sparse_logits(self, hidden: Tensor, input_ids: Tensor) -> Tensor:
        """Per-token lexical logits `[T]` (the weight is their ReLU): linear(hidden) times the token's prior."""
        return self.sparse_linear(hidden).squeeze(-1) * self.token_prior[input_ids].to(hidden.dtype)

    def sparse_weights(self, hidden: Tensor, batch: UnpaddedBatch) -> SparseEmbedding:
        token_weights = F.relu(self.sparse_logits(hidden, batch.input_ids))  # [T]
        keep = ~torch.isin(batch.input_ids, self.special_token_ids)
        seq = batch.sequence_index[keep]
        tok = batch.input_ids[keep]
        w = token_weights[keep]
        # max over repeated ids within a sequence, via one key per (sequence, token id)
        keys = seq * self.vocab_size + tok
        unique_keys, inverse = torch.unique(keys, return_inverse=True)
        reduced = w.new_zeros(len(unique_keys)).scatter_reduce(0, inverse, w, reduce="amax", include_self=False)
        first = torch.zeros(len(unique_keys), dtype=torch.long, device=w.device).scatter_(
            0, inverse, torch.arange(len(keys), device=w.device))
        if self.tf_k1 > 0:
            tf = torch.bincount(inverse, minlength=len(unique_keys))
            lengths = torch.bincount(seq, minlength=batch.num_sequences)  # non-special tokens per text
            reduced = reduced * self.tf_saturation(tf, lengths[seq[first]]).to(reduced.dtype)
        seq, tok = seq[first], tok[first]
        live = reduced > 0
        return SparseEmbedding(seq[live], tok[live], reduced[live], batch.num_sequences)

    def tf_saturation(self, tf: Tensor, length: Tensor) -> Tensor:
        """BM25's tf (k1+1) / (tf + k1 (1 - b + b len / mean_len)) of each (token count, text length) pair."""
        tf, length = tf.float(), length.float()
        mean = self.mean_text_length.float()
        relative = torch.where(mean > 0, length / mean.clamp_min(1e-6), torch.ones_like(length))
        return tf * (self.tf_k1 + 1.0) / (tf + self.tf_k1 * (1.0 - self.length_b + self.length_b * relative))

    def forward(self, hidden: Tensor, batch: UnpaddedBatch) -> TRMOutput:
        pooled = pool(hidden, batch, self.pooling)  # [B, H]
        dense = F.normalize(pooled.float(), dim=-1)
        return TRMOutput(dense=dense, sparse=self.sparse_weights(hidden, batch), cls_hidden=pooled)


def pool(hidden: Tensor, batch: UnpaddedBatch, mode: str) -> Tensor:
    """Packed states `[T, H]` -> one state per sequence `[B, H]`: its first token ("cls") or the mean of all
    its tokens ("mean", the same average sentence-transformers' Pooling takes over the attention mask)."""
    if mode == "cls":
        return hidden[batch.first_token_index]
    sums = hidden.new_zeros(batch.num_sequences, hidden.shape[-1]).index_add_(0, batch.sequence_index, hidden)
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).to(hidden.dtype)
    return sums / lengths[:, None]


def idf_prior(documents: list[list[int]], vocab_size: int) -> Tensor:
    """An IDF-like `token_prior` `[vocab_size]` from token-id documents: the square root of BM25's idf,
    ln(1 + (N - df + .5) / (df + .5)), scaled so that the average running-text token of `documents` weighs 1.

    The square root because a lexical score multiplies the query's weight by the document's: with the root on
    each side a matched token counts its idf once, as in BM25. (The idf itself on both sides squares it: a
    query of five rare tokens then scores in the tens, the sparse softmax at temperature 0.05 turns one-hot,
    and fine-tuning drove the sparse head below an untrained one: measured, docs/small_preset.md.) Ids in no
    document get the largest value, as a word seen once would."""
    if not documents:
        raise ValueError("documents: an IDF prior needs at least one document")
    docs = [torch.as_tensor(ids, dtype=torch.long) for ids in documents]
    # two bincounts over all documents at once: each document's distinct ids (document frequency) and every id
    df = torch.bincount(torch.cat([d.unique() for d in docs]), minlength=vocab_size).double()
    counts = torch.bincount(torch.cat(docs), minlength=vocab_size).double()
    n = len(documents)
    idf = torch.log1p((n - df + 0.5) / (df + 0.5))
    mean = (idf * counts).sum() / counts.sum().clamp(min=1)
    return (idf / mean).sqrt().float()


def fit_sparse_statistics(head: TRMHead, documents: list[list[int]], prior: bool | None = None,
                          length: bool | None = None) -> None:
    """Estimate the head's corpus statistics on `documents` (token ids without special tokens): the idf prior
    (`prior`) and the mean text length of BM25's length normalisation (`length`). By default, those the head
    uses: the prior when it has one (it was trained with `train.sparse_prior=idf`; a head without a prior keeps
    none) and the mean length with tf_k1 > 0. Training sets them from its documents; at search time they can be
    re-estimated on the collection searched, as BM25 computes its idf over its index."""
    prior = has_sparse_prior(head) if prior is None else prior
    length = head.tf_k1 > 0 if length is None else length
    with torch.no_grad():
        if prior:
            head.token_prior.copy_(idf_prior(documents, head.vocab_size).to(head.token_prior.device))
        if length:
            head.mean_text_length.fill_(sum(map(len, documents)) / max(len(documents), 1))


def has_sparse_prior(head: TRMHead) -> bool:
    """Whether the head weighs tokens by a prior (an all-ones `token_prior` is none)."""
    return not bool(torch.all(head.token_prior == 1))


def dense_scores(queries: Tensor, docs: Tensor) -> Tensor:
    """Cosine similarity `[Bq, Bd]` of normalised embeddings."""
    return queries @ docs.T


def hybrid_scores(queries: TRMOutput, docs: TRMOutput, sparse_weight: float = 0.3,
                  dim: int | None = None) -> Tensor:
    """s = s_dense + gamma * s_sparse (mGTE's hybrid; gamma searched on a dev split in evaluation)."""
    q = queries.dense if dim is None else queries.dense_at(dim)
    d = docs.dense if dim is None else docs.dense_at(dim)
    return dense_scores(q, d) + sparse_weight * sparse_scores(queries.sparse, docs.sparse)


class TextRepresentationModel(nn.Module):
    def __init__(self, config: ModelConfig, special_token_ids: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = TRMHead(config, special_token_ids)

    def forward(self, batch: UnpaddedBatch) -> TRMOutput:
        return self.head(self.encoder(batch), batch)


# ---- reranker ---------------------------------------------------------------------------------------------
class RerankerHead(nn.Module):
    def __init__(self, config: ModelConfig, use_pooler: bool = True) -> None:
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if use_pooler else None
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, pooled: Tensor) -> Tensor:
        """Pooled states `[B, H]` -> one logit per sequence `[B]`."""
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(pooled))
        return self.classifier(pooled).squeeze(-1)  # [B]


def pair_match_types(batch: UnpaddedBatch, sep_token_id: int, vocab_size: int) -> Tensor:
    """Token types `[T]` of packed `<s> q </s></s> d </s>` pairs: 1 for a query token whose id occurs in the
    document and a document token whose id occurs in the query, 0 elsewhere (the first token and every separator
    included). The query is the tokens between the first token and the first separator; a sequence without a
    separator is all query and matches nothing."""
    ids, seq, pos = batch.input_ids, batch.sequence_index, batch.position_ids
    is_sep = ids == sep_token_id
    no_sep = torch.full((batch.num_sequences,), torch.iinfo(pos.dtype).max, dtype=pos.dtype, device=ids.device)
    boundary = no_sep.scatter_reduce(0, seq[is_sep], pos[is_sep], reduce="amin")[seq]  # first separator, per token
    query = (pos > 0) & (pos < boundary)
    doc = (pos > boundary) & ~is_sep
    keys = seq * vocab_size + ids  # one key per (pair, token id)
    matched = (query & torch.isin(keys, keys[doc])) | (doc & torch.isin(keys, keys[query]))
    return matched.long()


class Reranker(nn.Module):
    """Cross-encoder: one logit per `[CLS] q [SEP] d` sequence, read from its CLS state or, with
    `model.pooling=mean`, the mean of all its token states."""

    def __init__(self, config: ModelConfig, use_pooler: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = RerankerHead(config, use_pooler)

    def forward(self, batch: UnpaddedBatch) -> Tensor:
        if self.config.pair_match_types:  # the ids decide the types: whatever a caller passed is replaced
            batch = replace(batch, token_type_ids=pair_match_types(batch, self.config.sep_token_id,
                                                                   self.config.vocab_size))
        if self.config.pooling == "mean":
            # the whole sequence's states (match-typed tokens included), as the TRM's mean pooling; the CLS branch
            # below computes only the first rows. A probe found both learn alike (docs/small_preset.md, session 10)
            return self.head(pool(self.encoder(batch), batch, "mean"))
        return self.head(self.encoder.cls_states(batch))
