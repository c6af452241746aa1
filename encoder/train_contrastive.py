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

The run directory holds checkpoints (encoder.checkpoint) and `final/` (encoder.artifacts): model.pt, model.yaml
(the model config *for inference*: with revNTK the trained base θ/f and NTK factor f), inference.json,
tokenizer/, manifest.json. Pair batching lives in encoder.pair_batching, GradCache in encoder.grad_cache, the
loop and command line in encoder.loop; this module holds what is specific to the TRM.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from data_prep.pairs import PairRecord
from data_prep.tokenizer import backend_tokenizer, load_tokenizer, special_ids

from .artifacts import inference_model_config, load_encoder_weights, save_final
from .batch import UnpaddedBatch
from .config import config_field
from .distributed import all_gather_variable, barrier, seed_everything
from .grad_cache import grad_cache_step, plan_chunks
from .heads import TextRepresentationModel, TRMOutput, fit_sparse_statistics, has_sparse_prior
from .loop import StepOutput, run_loop, step_output, trainer_cli, training_session
from .losses import LossConfig, LossOutput, build_output_losses, concat_trm, global_pair_loss, select_rows
from .pair_batching import PairBatch, PairBatches, PairDataConfig, interleave, load_records, long_pair_batches
from .training import RunConfig, TrainConfig, at_least, build_engine, build_optimizer, require


# ---- the run config ----------------------------------------------------------------------------------------
@dataclass
class ContrastiveTrainConfig(TrainConfig):
    init_from: str = ""  # MLM checkpoint / run dir (encoder weights; heads fresh) or a TRM final/ dir
    # > 1: train at rope_theta / f, saved for inference as (θ/f, NTK f) (mGTE: 8)
    revntk_factor: float = at_least(1, 1.0, " (1 = off)")
    # the lexical weights' per-token prior when the head starts fresh (an MLM init; a TRM init keeps its own):
    # none, or idf (BM25's idf over the training documents, heads.idf_prior)
    sparse_prior: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.sparse_prior in ("none", "idf"), "train.sparse_prior", "expected none or idf", self.sparse_prior)


@dataclass
class TRMRunConfig(RunConfig):
    data: PairDataConfig = config_field(PairDataConfig)
    loss: LossConfig = config_field(LossConfig)
    train: ContrastiveTrainConfig = config_field(ContrastiveTrainConfig)


# ---- the step -----------------------------------------------------------------------------------------------
def trm_leaves(rep: TRMOutput) -> list[Tensor]:
    return [rep.cls_hidden, rep.sparse.weights]


def trm_rebuild(rep: TRMOutput, leaves: list[Tensor]) -> TRMOutput:
    cls_hidden, weights = leaves
    return TRMOutput(dense=F.normalize(cls_hidden.float(), dim=-1), sparse=replace(rep.sparse, weights=weights),
                     cls_hidden=cls_hidden)


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


def set_sparse_prior(model: TextRepresentationModel, prior: str, records: list[PairRecord], tokenizer) -> None:
    """What the sparse head takes from the training documents (each distinct positive and negative text once):
    an IDF prior, unless the model already has one (initialised from a TRM that learnt with it), and, for BM25's
    length normalisation (model.sparse_tf_k1 > 0), their mean length, unless known. A resumed run recomputes the
    same values and its checkpoint's copy replaces them anyway."""
    head = model.head
    need_prior = prior != "none" and not has_sparse_prior(head)
    need_length = head.tf_k1 > 0 and float(head.mean_text_length) == 0
    if not (need_prior or need_length):
        return
    texts = sorted({r.positive for r in records} | {n for r in records for n in r.negatives})
    ids = [e.ids for e in backend_tokenizer(tokenizer).encode_batch(texts, add_special_tokens=False)]
    fit_sparse_statistics(head, ids, prior=need_prior, length=need_length)
    if need_prior:
        print(f"sparse prior: idf over {len(texts)} training documents")
    if need_length:
        print(f"sparse length normalisation: mean training document length {float(head.mean_text_length):.1f} tokens")


def train(config: TRMRunConfig, resume: str = "none", stop_after: int | None = None) -> dict:
    """Run (or continue) contrastive training; returns the loop's summary with the `final/` directory."""
    train_cfg, optim_cfg, run_dir = config.train, config.optim, Path(config.checkpoint.dir)
    with training_session(config) as env:
        tokenizer = load_tokenizer(config.data.tokenizer)
        model = build_trm(config, tokenizer).to(env.device)
        records = load_records(config.data, env.device)
        set_sparse_prior(model, train_cfg.sparse_prior, records, tokenizer)
        data = PairBatches(records, tokenizer, config.data, train_cfg.seed, env.rank)
        batch_at = interleave(data, long_pair_batches(config.data, tokenizer, train_cfg.seed, env.rank),
                              config.data.long_every)
        seed_everything(train_cfg.seed, rank_offset=env.rank)
        optimizer = build_optimizer(model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.betas, optim_cfg.eps,
                                    optim_cfg.decoupled_weight_decay, optim_cfg.lr_scales)
        engine = build_engine(train_cfg.engine, model, optimizer, env, train_cfg.precision, 1,
                              optim_cfg.max_grad_norm, train_cfg.deepspeed_config)
        outputs = build_output_losses(config.loss, config.model.hidden_size)

        def step_fn(step: int) -> StepOutput:
            batch = batch_at(step)
            return step_output(trm_step(engine, batch, outputs, config, env.device), batch.num_tokens, env.device)

        summary = run_loop(config, env, engine, step_fn, desc="trm", resume=resume, stop_after=stop_after)
        final = run_dir / "final"
        if env.is_main and summary["step"] == train_cfg.max_steps:
            info = {"kind": "trm", "special_token_ids": list(special_ids(tokenizer).all_special),
                    "max_query_length": config.data.max_query_length, "max_doc_length": config.data.max_doc_length,
                    "revntk_factor": train_cfg.revntk_factor,
                    "trained_rope_theta": engine.model.encoder.config.rope_theta,
                    "matryoshka_dims": config.loss.dims(config.model.hidden_size), "steps": summary["step"],
                    "long_pairs": bool(config.data.long_pairs and config.data.use_long_pairs)}
            save_final(final, engine.model, inference_model_config(config.model, train_cfg.revntk_factor),
                       config.data.tokenizer, info)
        barrier()
    return {**summary, "final": str(final) if summary["step"] == train_cfg.max_steps else ""}


main = trainer_cli(TRMRunConfig, train, __doc__, example="configs/trm_ft.yaml",
                   init_help="MLM checkpoint or run dir (encoder weights, fresh heads), or a TRM final/ dir")


if __name__ == "__main__":
    sys.exit(main())
