r"""Contrastive training of the TRM (dense + sparse) from an MLM checkpoint: pre-training and fine-tuning.

    python -m encoder.train_contrastive --config configs/trm_cpt.yaml data.pairs=runs/pairs.jsonl \
        data.tokenizer=runs/tokenizer train.init_from=runs/mlm_stage2
    python -m encoder.train_contrastive --config configs/trm_ft.yaml train.init_from=runs/trm_cpt/final \
        data.negatives_from=runs/trm_cpt/final
    torchrun --nproc_per_node 8 -m encoder.train_contrastive --config configs/trm_ft.yaml

CPT (weak pairs): in-batch negatives only, one source per batch, dense loss (τ 0.01). FT: 1 positive +
hard negatives per query, Matryoshka dense terms + the sparse term. A step's batch (queries, positives,
negatives) is encoded in length-sorted sub-batches of at most `data.sub_batch_tokens` tokens with gradient
caching: all sub-batches without grad -> full-batch loss and its gradient wrt the representations ->
each sub-batch again with grad, back-propagating the cached gradient (same dropout masks). Activation
memory is one sub-batch whatever the batch size.

The run directory holds checkpoints (encoder.checkpoint) and `final/`: model.pt, model.yaml (the model
config *for inference*: with revNTK the trained base θ/f and NTK factor f), inference.json, tokenizer/.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data_prep.pairs import PairRecord, equivalence_key, linked_texts, mine_hard_negatives, normalise, read_pairs
from data_prep.sampling import sampling_probabilities
from data_prep.tokenizer import load_tokenizer, special_ids

from .batch import UnpaddedBatch
from .checkpoint import CheckpointError, CheckpointManager, resolve_checkpoint
from .config import ModelConfig, config_field, load_config, save_config
from .distributed import DistEnv, all_gather_variable, barrier, init_distributed, seed_everything
from .heads import TextRepresentationModel, TRMOutput
from .inference import length_batches, tokenize_texts
from .losses import LossConfig, LossOutput, build_output_losses, concat_trm, global_pair_loss, select_rows
from .train_mlm import CheckpointConfig, LogConfig, OptimConfig
from .training import NonFiniteGuard, NonFiniteLossError, Progress, TrainLogger, build_engine, build_optimizer, lr_at


# ---- the run config ----------------------------------------------------------------------------------------
@dataclass
class PairDataConfig:
    pairs: str = "runs/pairs.jsonl"  # data_prep.pairs jsonl (query, positive, negatives, langs, source)
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


@dataclass
class ContrastiveTrainConfig:
    max_steps: int = 1000
    precision: str = "bf16"
    seed: int = 0
    device: str = "auto"
    engine: str = "plain"
    deepspeed_config: str = "launch/deepspeed/zero1.json"
    init_from: str = ""  # MLM checkpoint / run dir (encoder weights; heads fresh) or a TRM final/ dir
    revntk_factor: float = 1.0  # > 1: train at rope_theta / f, saved for inference as (θ/f, NTK f) (mGTE: 8)
    max_nonfinite: int = 5


@dataclass
class TRMRunConfig:
    model: ModelConfig = config_field(ModelConfig)
    data: PairDataConfig = config_field(PairDataConfig)
    loss: LossConfig = config_field(LossConfig)
    optim: OptimConfig = config_field(OptimConfig)
    train: ContrastiveTrainConfig = config_field(ContrastiveTrainConfig)
    checkpoint: CheckpointConfig = config_field(CheckpointConfig)
    log: LogConfig = config_field(LogConfig)


# ---- weights in and out ------------------------------------------------------------------------------------
def load_encoder_weights(model: torch.nn.Module, source: str | Path) -> str:
    """Encoder weights from an MLM checkpoint / run dir or a `final/` dir; heads keep their fresh init unless
    the source has the same kind of head. Returns what was loaded, for the log."""
    path = Path(source)
    if (path / "model.pt").is_file() and (path / "inference.json").is_file():
        weights = path / "model.pt"  # a TRM / reranker final directory
    else:
        weights = resolve_checkpoint(path) / "model.pt"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder_state:
        raise CheckpointError(f"{weights}: no encoder.* weights")
    model.encoder.load_state_dict(encoder_state)  # strict: a shape or name mismatch names the key
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    own = model.head.state_dict()
    if head_state and set(head_state) == set(own) and all(v.shape == own[k].shape for k, v in head_state.items()):
        model.head.load_state_dict(head_state)
        return f"{weights} (encoder + head)"
    return f"{weights} (encoder; head freshly initialised)"


def inference_model_config(model_config: ModelConfig, revntk_factor: float) -> ModelConfig:
    """revNTK: trained at base θ/f; served with (θ/f, NTK f), which restores θ's long-context behaviour."""
    if revntk_factor == 1.0:
        return model_config
    return replace(model_config, rope_theta=model_config.rope_theta / revntk_factor, rope_ntk_factor=revntk_factor)


def save_final(directory: Path, model: torch.nn.Module, model_config: ModelConfig, tokenizer_dir: str | Path,
               info: dict[str, Any]) -> Path:
    """`final/`: weights, inference model config, tokenizer copy, and what kind of model it is."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, directory / "model.pt")
    save_config(model_config, directory / "model.yaml")
    (directory / "inference.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    shutil.copytree(tokenizer_dir, directory / "tokenizer", dirs_exist_ok=True)
    return directory


def load_final(directory: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, Any, dict]:
    """(model, tokenizer, info) from a `final/` directory of this trainer or of train_reranker."""
    from .heads import Reranker

    directory = Path(directory)
    info = json.loads((directory / "inference.json").read_text(encoding="utf-8"))
    model_config = load_config(ModelConfig, directory / "model.yaml")
    if info["kind"] == "trm":
        model = TextRepresentationModel(model_config, tuple(info["special_token_ids"]))
    elif info["kind"] == "reranker":
        model = Reranker(model_config, use_pooler=info.get("use_pooler", True))
    else:
        raise ValueError(f"{directory / 'inference.json'}: unknown kind {info['kind']!r}")
    model.load_state_dict(torch.load(directory / "model.pt", map_location=map_location, weights_only=True))
    return model.eval(), load_tokenizer(directory / "tokenizer"), info


# ---- data ---------------------------------------------------------------------------------------------------
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

    def pick(self, step: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """(picked record indices, members of their group, this rank's generator for the step)."""
        group = np.random.default_rng([self.seed, step]).choice(len(self.groups), p=self.probs)
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


def long_pair_batches(config: PairDataConfig, tokenizer, seed: int, rank: int = 0) -> LengthBuckets | None:
    """The TRM's long-document batches, or None when `data.long_pairs` is unset or `use_long_pairs` is off."""
    if not config.long_pairs or not config.use_long_pairs:
        return None
    records = read_pairs(config.long_pairs)
    lengths = [len(ids) for ids in tokenize_texts(tokenizer, [r.positive for r in records],
                                                  config.max_long_doc_length)[0]]
    long_config = replace(config, group_by="none", max_doc_length=config.max_long_doc_length)
    return LengthBuckets(records, lengths, 1 + config.num_hard_negatives, config.long_batch_tokens, config.alpha,
                         seed, lambda recs, size: PairBatches(recs, tokenizer, replace(long_config, batch_size=size),
                                                              seed, rank))


def interleave(short: Any, long: Any | None, every: int) -> Callable[[int], Any]:
    """step -> batch: every `every`-th step from `long` (when given), the others from `short`."""
    if every < 1:
        raise ValueError(f"data.long_every: must be >= 1, got {every}")
    return lambda step: long.batch(step) if long is not None and step % every == every - 1 else short.batch(step)


def mine_negatives(records: list[PairRecord], model_dir: str, num_negatives: int, window: tuple[int, int],
                   device: torch.device) -> list[PairRecord]:
    """Hard negatives for every record from the documents of the pair set, searched with a trained TRM."""
    from .inference import encode

    model, tokenizer, _ = load_final(model_dir)
    model.to(device)
    corpus = list(dict.fromkeys(r.positive for r in records))

    def encode_fn(texts: list[str]) -> Tensor:
        return encode(model, tokenizer, texts).dense

    mined, stats = mine_hard_negatives(records, corpus, encode_fn, num_negatives, window, progress=False)
    print(f"mined hard negatives with {model_dir}: {stats.negatives} (negatives -> records), short {stats.short}")
    return mined


# ---- gradient caching ---------------------------------------------------------------------------------------
def trm_leaves(rep: TRMOutput) -> list[Tensor]:
    return [rep.cls_hidden, rep.sparse.weights]


def trm_rebuild(rep: TRMOutput, leaves: list[Tensor]) -> TRMOutput:
    cls_hidden, weights = leaves
    return TRMOutput(dense=F.normalize(cls_hidden.float(), dim=-1), sparse=replace(rep.sparse, weights=weights),
                     cls_hidden=cls_hidden)


@contextlib.contextmanager
def _replay_rng(state: dict[str, Any]):
    """Run a block with the RNG state saved before the no-grad pass (same dropout masks), then go on."""
    devices = [state["cuda_device"]] if "cuda" in state else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state["cpu"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], state["cuda_device"])
        yield


def _rng_snapshot(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"], state["cuda_device"] = torch.cuda.get_rng_state(device), device
    return state


def grad_cache_step(forward: Callable[[UnpaddedBatch], Any], chunks: Sequence[UnpaddedBatch],
                    loss_fn: Callable[[list[Any]], LossOutput], backward: Callable[[Tensor], None],
                    leaves: Callable[[Any], list[Tensor]], rebuild: Callable[[Any, list[Tensor]], Any],
                    accumulate: Callable[[bool], contextlib.AbstractContextManager], device: torch.device
                    ) -> LossOutput:
    """GradCache (Gao et al. 2021): exact full-batch gradients with one sub-batch of activations at a time."""
    states, reps = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_snapshot(device))
            reps.append(forward(chunk))
    cached = [[t.detach().requires_grad_(t.is_floating_point()) for t in leaves(rep)] for rep in reps]
    result = loss_fn([rebuild(rep, c) for rep, c in zip(reps, cached)])
    result.loss.backward()  # gradients wrt the representations only: no parameter is in this graph
    for i, chunk in enumerate(chunks):
        with accumulate(i == len(chunks) - 1), _replay_rng(states[i]):
            rep = forward(chunk)
            surrogate = result.loss.new_zeros(())
            for fresh, old in zip(leaves(rep), cached[i]):
                if fresh.shape != old.shape:
                    raise RuntimeError(f"grad cache: sub-batch {i} changed shape between passes "
                                       f"({tuple(old.shape)} -> {tuple(fresh.shape)}); is the model deterministic?")
                grad = old.grad if old.grad is not None else torch.zeros_like(old)
                # unused outputs still join the graph (x0) so DDP sees every parameter used
                surrogate = surrogate + (fresh.float() * grad.float()).sum()
            backward(surrogate)
    return result


def plan_chunks(sequences: list[list[int]], budget: int, device: torch.device) -> tuple[list[UnpaddedBatch], Tensor]:
    """Length-sorted packed sub-batches and the permutation that restores the input order."""
    groups = length_batches([len(s) for s in sequences], budget)
    order = [i for g in groups for i in g]
    chunks = [UnpaddedBatch.from_sequences([sequences[i] for i in g], device=device) for g in groups]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return chunks, inverse.to(device)


# ---- the step -----------------------------------------------------------------------------------------------
def false_negative_mask(batch: PairBatch, device: torch.device, gather: bool) -> Tensor:
    """`[B, B + M]` (global when gathering): True where a document has the key of the query's positive (the
    same text, or one the pairs link to it)."""
    pos, neg = batch.positive_keys.to(device), batch.negative_keys.to(device)
    if gather:
        pos, neg = all_gather_variable(pos), all_gather_variable(neg)
    return pos[:, None] == torch.cat([pos, neg])[None, :]


def trm_loss_fn(num_queries: int, num_negatives: int, inverse: Tensor, outputs, gather: bool,
                mask: Tensor, row_masks: dict[str, Tensor] | None = None) -> Callable[[list[TRMOutput]], LossOutput]:
    """The step's loss from the sub-batch representations (in plan order, restored by `inverse`)."""
    b, m = num_queries, num_negatives

    def loss_fn(reps: list[TRMOutput]) -> LossOutput:
        full = select_rows(concat_trm(reps), inverse)  # rows: [queries ; positives ; negatives]
        device = full.cls_hidden.device
        queries = select_rows(full, torch.arange(b, device=device))
        positives = select_rows(full, torch.arange(b, 2 * b, device=device))
        negatives = select_rows(full, torch.arange(2 * b, 2 * b + m, device=device)) if m else None
        return global_pair_loss(queries, positives, negatives, outputs, gather=gather, mask=mask,
                                row_masks=row_masks)

    return loss_fn


def trm_step(engine, batch: PairBatch, outputs, config: TRMRunConfig, device: torch.device) -> LossOutput:
    """Forward/backward of one step's batch on this rank (no optimizer update)."""
    sequences = batch.queries + batch.positives + batch.negatives
    budget = config.data.sub_batch_tokens if config.data.grad_cache else sum(len(s) for s in sequences)
    chunks, inverse = plan_chunks(sequences, budget, device)
    gather = config.loss.gather_across_devices
    row_masks = ({"sparse": batch.lexical_overlap.to(device)}
                 if config.loss.sparse_lexical_rows_only and batch.lexical_overlap is not None else None)
    loss_fn = trm_loss_fn(len(batch.queries), len(batch.negatives), inverse, outputs, gather,
                          false_negative_mask(batch, device, gather), row_masks)

    def forward(chunk: UnpaddedBatch) -> TRMOutput:
        with engine.autocast():
            return engine(chunk)

    if not config.data.grad_cache:
        result = loss_fn([forward(c) for c in chunks])
        engine.backward(result.loss)
        return result
    return grad_cache_step(forward, chunks, loss_fn, engine.backward, trm_leaves, trm_rebuild,
                           lambda last: engine.accumulate(is_boundary=last), device)


# ---- the trainer --------------------------------------------------------------------------------------------
def build_trm(config: TRMRunConfig, tokenizer) -> TextRepresentationModel:
    special = special_ids(tokenizer)
    if config.model.vocab_size < special.vocab_size:
        raise ValueError(f"model.vocab_size: {config.model.vocab_size} is smaller than the tokenizer's "
                         f"{special.vocab_size} ids (set model.vocab_size={special.padded_vocab_size})")
    # a copy: set_rope below must not rewrite the run config (a resume would divide θ twice)
    model = TextRepresentationModel(replace(config.model), special.all_special)
    if config.train.init_from:
        print(f"initialised from {load_encoder_weights(model, config.train.init_from)}")
    model.encoder.set_rope(config.model.rope_theta / config.train.revntk_factor, 1.0)
    model.encoder.set_gradient_checkpointing(config.model.gradient_checkpointing)
    return model


def load_records(config: PairDataConfig, device: torch.device) -> list[PairRecord]:
    records = read_pairs(config.pairs)
    if config.negatives_from and config.num_hard_negatives:
        records = mine_negatives(records, config.negatives_from, config.num_hard_negatives,
                                 tuple(config.mining_rank_window), device)
    return records


def train(config: TRMRunConfig, resume: str = "none") -> dict:
    """Run (or continue) contrastive training; returns a summary with the `final/` directory."""
    train_cfg, optim_cfg, run_dir = config.train, config.optim, Path(config.checkpoint.dir)
    env = init_distributed(train_cfg.device)
    seed_everything(train_cfg.seed)  # identical initial heads on every rank
    tokenizer = load_tokenizer(config.data.tokenizer)
    model = build_trm(config, tokenizer).to(env.device)
    data = PairBatches(load_records(config.data, env.device), tokenizer, config.data, train_cfg.seed, env.rank)
    batch_at = interleave(data, long_pair_batches(config.data, tokenizer, train_cfg.seed, env.rank),
                          config.data.long_every)
    seed_everything(train_cfg.seed, rank_offset=env.rank)
    optimizer = build_optimizer(model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.betas, optim_cfg.eps,
                                optim_cfg.decoupled_weight_decay, optim_cfg.lr_scales)
    engine = build_engine(train_cfg.engine, model, optimizer, env, train_cfg.precision, 1, optim_cfg.max_grad_norm,
                          train_cfg.deepspeed_config)
    outputs = build_output_losses(config.loss, config.model.hidden_size)
    summary = run_loop(config, env, engine, run_dir, resume, "trm",
                       lambda step: trm_step(engine, batch_at(step), outputs, config, env.device))
    final = run_dir / "final"
    if env.is_main:
        info = {"kind": "trm", "special_token_ids": list(special_ids(tokenizer).all_special),
                "max_query_length": config.data.max_query_length, "max_doc_length": config.data.max_doc_length,
                "revntk_factor": train_cfg.revntk_factor, "trained_rope_theta": engine.model.encoder.config.rope_theta,
                "matryoshka_dims": config.loss.dims(config.model.hidden_size), "steps": summary["step"],
                "long_pairs": bool(config.data.long_pairs and config.data.use_long_pairs)}
        save_final(final, engine.model, inference_model_config(config.model, train_cfg.revntk_factor),
                   config.data.tokenizer, info)
    barrier()
    return {**summary, "final": str(final)}


def run_loop(config, env: DistEnv, engine, run_dir: Path, resume: str, desc: str,
             step_fn: Callable[[int], LossOutput]) -> dict:
    """The loop both retrieval trainers share: LR schedule, NaN guard, logging, checkpoints, exact resume.

    Batches are a pure function of the step (see `PairBatches`), so a checkpoint needs the step, the
    weights, the optimizer and the RNG states (dropout) only.
    """
    train_cfg, optim_cfg = config.train, config.optim
    manager = CheckpointManager(run_dir, config.checkpoint.keep_last)
    guard = NonFiniteGuard(train_cfg.max_nonfinite)
    start_step = 0
    checkpoint = None if resume in ("none", "") else (
        manager.latest_complete() if resume == "auto" else resolve_checkpoint(resume))
    if checkpoint is not None:
        loaded = manager.load(checkpoint, state_reader=engine.load_state)
        guard.load_state_dict(loaded.extra["guard"])
        start_step = loaded.step
        if env.is_main:
            print(f"resumed from {checkpoint} at step {start_step}")
    manager.remove_stale_temporaries()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    logger = TrainLogger(run_dir, enabled=env.is_main, tensorboard=config.log.tensorboard, resume_step=start_step)
    progress = Progress(train_cfg.max_steps, start_step, enabled=env.is_main and config.log.progress, desc=desc)
    engine.train()
    step, last = start_step, {}
    while step < train_cfg.max_steps:
        lr = lr_at(step, train_cfg.max_steps, optim_cfg.warmup_ratio, optim_cfg.lr, optim_cfg.final_lr_ratio)
        result = step_fn(step)
        applied = engine.step(lr, apply=guard.check(result.loss.detach(), step))
        step += 1
        last = {"loss": float(result.loss.detach()), "lr": lr, "skipped": 0.0 if applied else 1.0,
                **{f"loss/{k}": float(v) for k, v in result.parts.items()}}
        progress.update(0, loss=last["loss"])
        if step % config.log.every == 0 or step == train_cfg.max_steps:
            logger.log(step, last)
        if step % config.checkpoint.every == 0 or step == train_cfg.max_steps:
            manager.save(step, scheduler={"step": step}, extra={"guard": guard.state_dict()}, config=config,
                         state_writer=engine.save_state)
    progress.close()
    logger.close()
    if env.is_main and config.log.plot and step > start_step and logger.path.exists():
        from .training import plot_loss_curve

        plot_loss_curve(logger.path, run_dir / "loss.png", keys=("loss", "lr"))
    barrier()
    return {"start_step": start_step, "step": step, "skipped": guard.skipped_total, "run_dir": str(run_dir), **last}


# ---- command line -------------------------------------------------------------------------------------------
def build_parser(prog: str, doc: str, example: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=f"YAML preset, e.g. {example}")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100 "
                        "data.pairs=runs/pairs.jsonl data.tokenizer=runs/tokenizer checkpoint.dir=runs/trm")
    parser.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                        help="auto (default): continue from the newest complete checkpoint in checkpoint.dir if "
                        "any; none: start fresh; PATH: that checkpoint")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="MLM checkpoint or run dir (encoder weights, fresh heads); same as train.init_from")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def run_cli(argv: list[str] | None, run_config_cls: type, train_fn: Callable, prog: str, doc: str,
            example: str) -> int:
    args = build_parser(prog, doc, example).parse_args(argv)
    overrides = list(args.overrides) + ([f"train.init_from={args.init_from}"] if args.init_from else [])
    try:
        config = load_config(run_config_cls, args.config, overrides)
        config.model.validate()
        if args.print_config:
            import yaml

            from .config import to_dict

            print(yaml.safe_dump(to_dict(config), sort_keys=False))
            return 0
        summary = train_fn(config, resume=args.resume)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"done: step {summary['step']}, loss {summary.get('loss', float('nan')):.4f}, "
          f"skipped {summary['skipped']}, final model {summary['final']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, TRMRunConfig, train, "python -m encoder.train_contrastive", __doc__, "configs/trm_ft.yaml")


if __name__ == "__main__":
    sys.exit(main())
