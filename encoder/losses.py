"""Contrastive losses for the TRM: one InfoNCE term per output, each with its own score function.

BGE-M3's idea, kept small: an `OutputLoss` is (name, score function, temperature, weight); dense
Matryoshka prefixes and the sparse lexical output are just entries of that list, and the total is their
weighted sum. Weights and temperatures come from `LossConfig` (YAML), never from literals here.

Scores are `[Bq, Bd]` where the document side is `[positives (Bq) ; extra negatives (any number)]`:
query i's positive is column i, every other column is a negative for it (in-batch + hard negatives).

Across devices every rank gathers all queries and documents (keeping gradients for its own slice only,
`encoder.distributed`) and computes the *same* full-batch loss; back-propagating it gives each rank the
gradient wrt its own slice, so the sum of the ranks' parameter gradients is the full-batch gradient.
DDP averages instead of summing, hence `ddp_loss_scale()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import all_gather_variable, rank, world_size
from .heads import SparseEmbedding, TRMOutput, sparse_scores

ScoreFn = Callable[[TRMOutput, TRMOutput], Tensor]


@dataclass
class LossConfig:
    dense_temperature: float = 0.05  # mGTE fine-tuning (MRL) temperature; CPT uses 0.01
    sparse_temperature: float = 0.01  # mGTE τ_sparse
    dense_weight: float = 1.0  # multiplies every Matryoshka term (w_d below)
    sparse_weight: float = 0.1  # λ of L = λ·L_sparse + Σ_d w_d·L_dense(:d); 0 switches the sparse loss off
    matryoshka_dims: list[int] = field(default_factory=list)  # nested prefixes; [] = full width only
    matryoshka_step: int = 0  # > 0: every `step` dims up to hidden (mGTE: 32), used when dims is []
    matryoshka_weights: list[float] = field(default_factory=list)  # one per dim; [] = 1 each
    gather_across_devices: bool = True  # negatives from every rank (all-gather keeping local gradients)
    # the sparse term only over queries that share a (non-special) token with their positive: for the others
    # no lexical match exists, their term can only push every weight to 0, and on translation pairs that
    # kills the head (measured: sparse nDCG@10 0.115 with, vs 0.478 for the untrained overlap count)
    sparse_lexical_rows_only: bool = True

    def __post_init__(self) -> None:
        if self.dense_temperature <= 0 or self.sparse_temperature <= 0:
            raise ValueError("loss.*_temperature: must be positive")
        if self.matryoshka_weights and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError(f"loss.matryoshka_weights: {len(self.matryoshka_weights)} weights for "
                             f"{len(self.matryoshka_dims)} matryoshka_dims")
        if self.matryoshka_step < 0:
            raise ValueError(f"loss.matryoshka_step: must be >= 0, got {self.matryoshka_step}")

    def dims(self, hidden_size: int) -> list[int]:
        """The Matryoshka prefix widths for a model of `hidden_size` (always ends with the full width)."""
        if self.matryoshka_dims:
            dims = sorted(set(self.matryoshka_dims))
        elif self.matryoshka_step:
            dims = list(range(self.matryoshka_step, hidden_size + 1, self.matryoshka_step))
        else:
            dims = [hidden_size]
        if dims[-1] > hidden_size or dims[0] <= 0:
            raise ValueError(f"loss.matryoshka_dims: {dims} must lie in [1, hidden_size={hidden_size}]")
        return dims


# ---- the basic term ----------------------------------------------------------------------------------------
def info_nce(scores: Tensor, temperature: float, labels: Tensor | None = None,
             mask: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of `scores / temperature` `[Bq, Bd]` with targets `labels` (default: the diagonal).

    `mask` `[Bq, Bd]` (True = exclude) removes known false negatives; the target column is never excluded.
    `rows` `[Bq]` bool keeps only those queries in the mean (none kept: a zero that still touches the graph).
    """
    if labels is None:
        labels = torch.arange(scores.shape[0], device=scores.device)
    if rows is not None:
        if not bool(rows.any()):
            return scores.sum() * 0.0
        scores, labels = scores[rows], labels[rows]
        mask = mask[rows] if mask is not None else None
    logits = scores.float() / temperature
    if mask is not None:
        mask = mask.clone()
        mask[torch.arange(len(labels), device=mask.device), labels] = False
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, labels)


# ---- score functions (pluggable per output) -------------------------------------------------------------
def dense_score_at(dim: int | None = None) -> ScoreFn:
    """Cosine of the (Matryoshka-truncated, re-normalised) CLS embeddings."""
    def score(queries: TRMOutput, docs: TRMOutput) -> Tensor:
        if dim is None:
            return queries.dense @ docs.dense.T
        return queries.dense_at(dim) @ docs.dense_at(dim).T
    return score


def sparse_score(queries: TRMOutput, docs: TRMOutput) -> Tensor:
    """Σ over shared token ids of w_q · w_d."""
    return sparse_scores(queries.sparse, docs.sparse)


@dataclass(frozen=True)
class OutputLoss:
    name: str
    score_fn: ScoreFn
    temperature: float
    weight: float


def build_output_losses(config: LossConfig, hidden_size: int) -> list[OutputLoss]:
    """dense@d for every Matryoshka width (weight dense_weight·w_d), then sparse (weight λ) when enabled."""
    dims = config.dims(hidden_size)
    weights = config.matryoshka_weights or [1.0] * len(dims)
    if config.matryoshka_dims and len(weights) != len(dims):  # duplicates were removed by dims()
        raise ValueError("loss.matryoshka_dims: duplicated widths")
    losses = [OutputLoss(f"dense@{d}", dense_score_at(None if d == hidden_size else d), config.dense_temperature,
                         config.dense_weight * w) for d, w in zip(dims, weights) if config.dense_weight * w != 0]
    if config.sparse_weight:
        losses.append(OutputLoss("sparse", sparse_score, config.sparse_temperature, config.sparse_weight))
    return losses


@dataclass
class LossOutput:
    loss: Tensor  # weighted total (what to back-propagate)
    parts: dict[str, Tensor]  # unweighted per-output InfoNCE values, detached, for logging


def contrastive_loss(queries: TRMOutput, docs: TRMOutput, outputs: Sequence[OutputLoss],
                     mask: Tensor | None = None, row_masks: Mapping[str, Tensor] | None = None) -> LossOutput:
    """Σ_i weight_i · InfoNCE(score_fn_i(q, d) / τ_i); docs = [positives ; negatives] as described above.
    `row_masks` (output name -> `[Bq]` bool) restricts an output's term to some queries."""
    row_masks = row_masks or {}
    if docs.cls_hidden.shape[0] < queries.cls_hidden.shape[0]:
        raise ValueError(f"docs: {docs.cls_hidden.shape[0]} documents for {queries.cls_hidden.shape[0]} queries; "
                         f"the first Bq documents must be the positives")
    total = queries.cls_hidden.new_zeros((), dtype=torch.float32)
    parts: dict[str, Tensor] = {}
    for output in outputs:
        value = info_nce(output.score_fn(queries, docs), output.temperature, mask=mask,
                         rows=row_masks.get(output.name))
        total = total + output.weight * value
        parts[output.name] = value.detach()
    return LossOutput(loss=total, parts=parts)


# ---- across devices ------------------------------------------------------------------------------------
def gather_sparse(sparse: SparseEmbedding) -> SparseEmbedding:
    """All ranks' sparse vectors, rank after rank, with gradients on this rank's weights only."""
    if world_size() == 1:
        return sparse
    device = sparse.weights.device
    # per-rank batch sizes via the variable gather itself: one rank id per sequence, then a bincount
    owners = all_gather_variable(torch.full((sparse.batch_size,), rank(), dtype=torch.long, device=device))
    sizes = torch.bincount(owners, minlength=world_size())
    offset = int(sizes[: rank()].sum())
    return SparseEmbedding(sequence_index=all_gather_variable(sparse.sequence_index + offset),
                           token_ids=all_gather_variable(sparse.token_ids),
                           weights=all_gather_variable(sparse.weights), batch_size=int(sizes.sum()))


def gather_trm(output: TRMOutput) -> TRMOutput:
    """`TRMOutput` of the whole global batch (rank order); a no-op in one process."""
    if world_size() == 1:
        return output
    cls_hidden = all_gather_variable(output.cls_hidden)
    return TRMOutput(dense=F.normalize(cls_hidden.float(), dim=-1), sparse=gather_sparse(output.sparse),
                     cls_hidden=cls_hidden)


def select_rows(output: TRMOutput, rows: Tensor) -> TRMOutput:
    return TRMOutput(dense=output.dense[rows], sparse=output.sparse.select(rows), cls_hidden=output.cls_hidden[rows])


def concat_trm(outputs: Sequence[TRMOutput]) -> TRMOutput:
    """Stack several `TRMOutput`s (row blocks in order) into one."""
    if len(outputs) == 1:
        return outputs[0]
    offsets = [0]
    for out in outputs:
        offsets.append(offsets[-1] + out.cls_hidden.shape[0])
    sparse = SparseEmbedding(
        sequence_index=torch.cat([o.sparse.sequence_index + off for o, off in zip(outputs, offsets)]),
        token_ids=torch.cat([o.sparse.token_ids for o in outputs]),
        weights=torch.cat([o.sparse.weights for o in outputs]), batch_size=offsets[-1])
    return TRMOutput(dense=torch.cat([o.dense for o in outputs]), sparse=sparse,
                     cls_hidden=torch.cat([o.cls_hidden for o in outputs]))


def global_pair_loss(queries: TRMOutput, positives: TRMOutput, negatives: TRMOutput | None,
                     outputs: Sequence[OutputLoss], gather: bool = True, mask: Tensor | None = None,
                     row_masks: Mapping[str, Tensor] | None = None) -> LossOutput:
    """The full-batch loss over every rank's queries, positives and hard negatives.

    Local rows: queries `[b]`, positives `[b]` (row i answers query i), negatives `[m]` (any number, may be
    None for in-batch-only pre-training). After gathering, documents are [all positives ; all negatives].
    `mask` (True = not a negative, e.g. the same text as the positive) is over the gathered matrix;
    `row_masks` are local `[b]` and gathered here.
    """
    if gather:
        queries, positives = gather_trm(queries), gather_trm(positives)
        negatives = gather_trm(negatives) if negatives is not None else None
        if row_masks and world_size() > 1:
            row_masks = {k: all_gather_variable(v.long()).bool() for k, v in row_masks.items()}
    docs = positives if negatives is None else concat_trm([positives, negatives])
    return contrastive_loss(queries, docs, outputs, mask=mask, row_masks=row_masks)


def ddp_loss_scale(gathered: bool) -> float:
    """Factor for the backward pass under DDP gradient *averaging*: each rank holds d(full loss)/d(own
    slice), so the gradients must be summed over ranks, i.e. averaged and multiplied by the world size."""
    return float(world_size()) if gathered else 1.0
