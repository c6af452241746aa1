r"""Cross-encoder reranker training from an MLM checkpoint (mGTE reranker, spec §3).

    python -m encoder.train_reranker --config configs/reranker.yaml train.init_from=runs/mlm_stage2 \
        data.pairs=runs/pairs/ft.jsonl data.negatives_from=runs/trm_ft/final

Input `<s> q </s></s> d </s>` through the tokenizer's own pair template, at most `data.max_length` (8192)
tokens, the document cut first. Loss: listwise InfoNCE over {positive, hard negatives, random negatives}
of each query (mGTE: 6 hard + 4 random), on one logit per pair, read from its CLS state (or the mean state:
model.pooling). Sub-batches are gradient-cached exactly like the TRM trainer, so groups of long pairs fit; the
shared loop gives checkpoints with exact resume.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from data_prep.pairs import PairRecord
from data_prep.tokenizer import load_tokenizer, special_ids

from .artifacts import load_encoder_weights, save_final
from .config import config_field
from .distributed import all_reduce_sum, barrier, seed_everything
from .grad_cache import grad_cache_step, plan_chunks
from .heads import Reranker
from .inference import tokenize_pairs
from .loop import StepOutput, run_loop, step_output, trainer_cli, training_session
from .losses import LossOutput
from .pair_batching import (
    GroupedRecords,
    LengthBuckets,
    PairDocuments,
    interleave,
    load_records,
    long_buckets,
    pick_negatives,
    validate_pair_data,
)
from .training import RunConfig, TrainConfig, build_engine, build_optimizer, require


@dataclass
class RerankerDataConfig:
    pairs: str = "runs/pairs.jsonl"  # data_prep.pairs jsonl
    sources: list[str] = field(default_factory=list)  # train on these sources only ("manpages" = manpages:*); [] all
    unique_queries: bool = False  # drop records whose query names several different positives
    tokenizer: str = "runs/tokenizer"
    max_length: int = 8192  # the whole `q + d` pair, specials included
    batch_size: int = 32  # queries per rank per step; each brings 1 + hard + random documents
    num_hard_negatives: int = 6  # mGTE: 6 hard ...
    num_random_negatives: int = 4  # ... + 4 random
    group_by: str = "source"
    alpha: float = 0.5
    sub_batch_tokens: int = 65536
    grad_cache: bool = True
    negatives_from: str = ""  # a TRM final/ dir: mine the hard negatives with it before training
    mining_rank_window: tuple[int, int] = (3, 30)
    long_pairs: str = ""  # data_prep.longdoc pairs jsonl: query -> the whole long document holding it
    use_long_pairs: bool = True  # False: ignore long_pairs (to measure what they add)
    long_every: int = 2  # every n-th step is a long-document batch (1 = all steps)
    long_batch_tokens: int = 65536  # a long batch holds as many query groups as fit in this many tokens
    max_long_length: int = 8192  # the whole `q + d` pair of a long step

    def __post_init__(self) -> None:
        validate_pair_data(self, ("max_length", "max_long_length"))
        require(self.num_random_negatives >= 0, "data.num_random_negatives", "must be >= 0",
                self.num_random_negatives)
        require(self.num_hard_negatives + self.num_random_negatives >= 1, "data.num_hard_negatives",
                "a listwise loss needs at least one negative per query (hard + random >= 1)",
                self.num_hard_negatives)


@dataclass
class RerankerLossConfig:
    temperature: float = 1.0  # logits are unbounded, so 1 (the listwise softmax of the reference)

    def __post_init__(self) -> None:
        require(self.temperature > 0, "loss.temperature", "must be positive", self.temperature)


@dataclass
class RerankerTrainConfig(TrainConfig):
    init_from: str = ""  # MLM checkpoint / run dir (mGTE: MLM-8192 directly); head always fresh unless a reranker
    use_pooler: bool = True  # BERT tanh pooler before the classifier, as the released model


@dataclass
class RerankerRunConfig(RunConfig):
    data: RerankerDataConfig = config_field(RerankerDataConfig)
    loss: RerankerLossConfig = config_field(RerankerLossConfig)
    train: RerankerTrainConfig = config_field(RerankerTrainConfig)


class RerankGroups:
    """Per step and rank: `batch_size` queries, each with its group [positive, negatives...] of documents."""

    def __init__(self, records: Sequence[PairRecord], config: RerankerDataConfig, seed: int, rank: int = 0) -> None:
        self.records, self.config = list(records), config
        self.sampler = GroupedRecords(records, config.group_by, config.alpha, config.batch_size, seed, rank)
        docs = PairDocuments.of(records)
        self.docs, self.positive, self.negatives, self.doc_keys = docs.texts, docs.positive, docs.negatives, docs.keys

    def batch(self, step: int) -> list[list[tuple[str, str]]]:
        picked, members, rng = self.sampler.pick(step)
        groups = []
        for i in picked:
            own = int(self.positive[i])
            negatives = pick_negatives(own, self.negatives[i], self.config.num_hard_negatives,
                                       self.config.num_random_negatives, self.positive[members], self.doc_keys, rng)
            query = self.records[i].query
            groups.append([(query, self.docs[own])] + [(query, self.docs[d]) for d in negatives])
        return groups


def long_rerank_groups(config: RerankerDataConfig, tokenizer, seed: int, rank: int = 0) -> LengthBuckets | None:
    """Long-document query groups batched by length, or None when `data.long_pairs` is unset or off."""
    long_config = replace(config, group_by="none")
    return long_buckets(config, tokenizer, config.max_long_length,
                        1 + config.num_hard_negatives + config.num_random_negatives, seed,
                        lambda recs, size: RerankGroups(recs, replace(long_config, batch_size=size), seed, rank))


def listwise_loss(logits: Tensor, group_size: int, temperature: float, global_queries: Tensor) -> Tensor:
    """Σ over this rank's queries of CE(group logits / τ, positive = 0), divided by the global query count
    (the engine's contract: gradients summed over ranks give the global mean)."""
    scores = logits.float().view(-1, group_size) / temperature  # [b, G]
    targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores, targets, reduction="sum") / global_queries


def reranker_step(engine, groups: list[list[tuple[str, str]]], tokenizer, config: RerankerRunConfig,
                  device: torch.device, max_length: int | None = None) -> tuple[LossOutput, int]:
    """Forward/backward of one step's query groups on this rank; (loss, tokens of this rank's pairs)."""
    group_size = len(groups[0])
    sequences, _ = tokenize_pairs(tokenizer, [p for g in groups for p in g], max_length or config.data.max_length)
    tokens = sum(len(s) for s in sequences)
    budget = config.data.sub_batch_tokens if config.data.grad_cache else sum(len(s) for s in sequences)
    chunks, inverse = plan_chunks(sequences, budget, device)
    global_queries = all_reduce_sum(torch.tensor(float(len(groups)), device=device))

    def loss_fn(reps: list[Tensor]) -> LossOutput:
        loss = listwise_loss(torch.cat(reps)[inverse], group_size, config.loss.temperature, global_queries)
        return LossOutput(loss=loss, parts={"listwise": loss.detach()})

    def forward(chunk) -> Tensor:
        with engine.autocast():
            return engine(chunk)

    if not config.data.grad_cache:
        result = loss_fn([forward(c) for c in chunks])
        engine.backward(result.loss)
        return result, tokens
    return grad_cache_step(forward, chunks, loss_fn, engine.backward, lambda t: [t], lambda _, leaves: leaves[0],
                           lambda last: engine.accumulate(is_boundary=last), device), tokens


def train(config: RerankerRunConfig, resume: str = "none", stop_after: int | None = None) -> dict:
    """Run (or continue) reranker training; returns the loop's summary with the `final/` directory."""
    train_cfg, optim_cfg, run_dir = config.train, config.optim, Path(config.checkpoint.dir)
    with training_session(config) as env:
        tokenizer = load_tokenizer(config.data.tokenizer)
        special = special_ids(tokenizer)
        if config.model.vocab_size < special.vocab_size:
            raise ValueError(f"model.vocab_size: {config.model.vocab_size} is smaller than the tokenizer's "
                             f"{special.vocab_size} ids (set model.vocab_size={special.padded_vocab_size})")
        model = Reranker(replace(config.model), use_pooler=train_cfg.use_pooler)
        if train_cfg.init_from:
            print(f"initialised from {load_encoder_weights(model, train_cfg.init_from)}")
        model.encoder.set_rope(config.model.rope_theta, config.model.rope_ntk_factor)
        model.encoder.set_gradient_checkpointing(config.model.gradient_checkpointing)
        model.to(env.device)
        data = RerankGroups(load_records(config.data, env.device), config.data, train_cfg.seed, env.rank)
        long_groups = long_rerank_groups(config.data, tokenizer, train_cfg.seed, env.rank)
        batch_at, every = interleave(data, long_groups, config.data.long_every), config.data.long_every
        seed_everything(train_cfg.seed, rank_offset=env.rank)
        optimizer = build_optimizer(model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.betas, optim_cfg.eps,
                                    optim_cfg.decoupled_weight_decay, optim_cfg.lr_scales)
        engine = build_engine(train_cfg.engine, model, optimizer, env, train_cfg.precision, 1,
                              optim_cfg.max_grad_norm, train_cfg.deepspeed_config)

        def step_fn(step: int) -> StepOutput:  # long steps get the long pair budget
            is_long = long_groups is not None and step % every == every - 1
            groups = batch_at(step)
            result, tokens = reranker_step(engine, groups, tokenizer, config, env.device,
                                           config.data.max_long_length if is_long else None)
            return step_output(result, tokens, env.device)

        summary = run_loop(config, env, engine, step_fn, desc="reranker", resume=resume, stop_after=stop_after)
        done = summary["step"] == train_cfg.max_steps
        final = run_dir / "final"
        if env.is_main and done:
            info = {"kind": "reranker", "use_pooler": train_cfg.use_pooler, "pooling": config.model.pooling,
                    "max_length": config.data.max_length, "long_pairs": long_groups is not None,
                    "special_token_ids": list(special.all_special), "steps": summary["step"]}
            save_final(final, engine.model, config.model, config.data.tokenizer, info)
        barrier()
    return {**summary, "final": str(final) if done else ""}


main = trainer_cli(RerankerRunConfig, train, __doc__, example="configs/reranker.yaml",
                   init_help="MLM checkpoint or run dir (encoder weights; the head is fresh unless a reranker final/)")


if __name__ == "__main__":
    sys.exit(main())
