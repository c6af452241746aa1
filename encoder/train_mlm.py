"""MLM pre-training on token shards (mGTE recipe: 30% masking, two stages 2048/θ=10k then 8192/θ=160k).

    python -m encoder.train_mlm --config configs/tiny_mlm_stage1.yaml data.shards=runs/data --resume auto
    python -m encoder.train_mlm --config configs/tiny_mlm_stage2.yaml --init-from runs/tiny_mlm_stage1
    deepspeed --num_gpus 8 -m encoder.train_mlm --config configs/mlm_stage1.yaml train.engine=deepspeed
    torchrun --nproc_per_node 8 -m encoder.train_mlm --config configs/mlm_stage1.yaml

One optimizer step = `train.grad_accum` packed micro-batches of at most `data.max_tokens` tokens on each
rank. The loss is the sum of token cross-entropies over the masked tokens of the whole step on all ranks
divided by their global count, so every masked token weighs the same whatever its batch or rank.
Everything the run writes lives in `checkpoint.dir`: config.yaml, metrics.jsonl, tensorboard/, loss.png,
ckpt-NNNNNN/ (model, optimizer, sampler position, RNG states; see encoder.checkpoint). The data stream is
encoder.mlm_data; the loop, locking and command line are encoder.loop.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from data_prep.tokenizer import SpecialIds

from .artifacts import load_weights
from .batch import IGNORE_INDEX, UnpaddedBatch
from .config import config_field
from .distributed import DistEnv, all_reduce_sum, seed_everything
from .heads import MaskedLM
from .loop import StepOutput, run_loop, trainer_cli, training_session
from .mlm_data import DataConfig, MLMData
from .training import RunConfig, TrainConfig, at_least, build_engine, build_optimizer


# ---- the run config ----------------------------------------------------------------------------------------
@dataclass
class MLMTrainConfig(TrainConfig):
    max_steps: int = at_least(1, 250_000)  # optimizer steps; the LR schedule spans exactly these
    grad_accum: int = at_least(1, 1)  # micro-batches per optimizer step on each rank
    deepspeed_config: str = "launch/deepspeed/zero2.json"
    init_from: str = ""  # weights only: a checkpoint directory or a run directory (its newest checkpoint)


@dataclass
class MLMRunConfig(RunConfig):
    data: DataConfig = config_field(DataConfig)
    train: MLMTrainConfig = config_field(MLMTrainConfig)


# ---- the trainer --------------------------------------------------------------------------------------------
def build_model(config: MLMRunConfig, special: SpecialIds) -> MaskedLM:
    if config.model.vocab_size < special.vocab_size:
        raise ValueError(f"model.vocab_size: {config.model.vocab_size} is smaller than the tokenizer's "
                         f"{special.vocab_size} ids (set model.vocab_size={special.padded_vocab_size})")
    model = MaskedLM(config.model)
    if config.train.init_from:
        model.load_state_dict(load_weights(config.train.init_from))
        print(f"initialised weights from {config.train.init_from}")
    # stage 2 continues stage 1's weights with a larger RoPE base: the rotary tables follow the config
    model.encoder.set_rope(config.model.rope_theta)
    model.encoder.set_gradient_checkpointing(config.model.gradient_checkpointing)
    return model


def train(config: MLMRunConfig, resume: str = "none", stop_after: int | None = None) -> dict:
    """Run (or continue) pre-training; returns the loop's summary (start_step, step, the last step's metrics,
    skipped_steps, run_dir)."""
    train_cfg, optim_cfg = config.train, config.optim
    with training_session(config) as env:
        data = MLMData(config.data, env, train_cfg.seed)
        model = build_model(config, data.special).to(env.device)
        seed_everything(train_cfg.seed, rank_offset=env.rank)  # distinct dropout streams per rank
        optimizer = build_optimizer(model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.betas, optim_cfg.eps,
                                    optim_cfg.decoupled_weight_decay, optim_cfg.lr_scales)
        engine = build_engine(train_cfg.engine, model, optimizer, env, train_cfg.precision, train_cfg.grad_accum,
                              optim_cfg.max_grad_norm, train_cfg.deepspeed_config)

        def step_fn(step: int) -> StepOutput:
            return train_step(engine, [data.next_batch() for _ in range(train_cfg.grad_accum)], env)

        return run_loop(config, env, engine, step_fn, desc="mlm", data_state=data, resume=resume,
                        stop_after=stop_after, plot_keys=("loss", "accuracy", "lr"))


def train_step(engine, micro_batches: list[UnpaddedBatch], env: DistEnv) -> StepOutput:
    """Forward/backward of one optimizer step over this rank's micro-batches (the loop applies the update);
    the loss and metrics are global (summed over ranks)."""
    local_masked = sum(int((b.labels != IGNORE_INDEX).sum()) for b in micro_batches)
    global_masked = all_reduce_sum(torch.tensor(float(local_masked), device=env.device))
    loss_sum = torch.zeros((), device=env.device)
    correct = torch.zeros((), device=env.device)
    for i, batch in enumerate(micro_batches):
        batch = batch.to(env.device)
        with engine.accumulate(is_boundary=i == len(micro_batches) - 1):
            with engine.autocast():
                out = engine(batch)
            # mean over this micro-batch's masked tokens -> sum; divided by the step's global count
            token_loss_sum = out.loss.float() * out.num_masked
            engine.backward(token_loss_sum / global_masked.clamp(min=1.0))
        loss_sum += token_loss_sum.detach()
        correct += out.num_correct.detach().float()
    tokens = float(sum(b.num_tokens for b in micro_batches))
    totals = all_reduce_sum(torch.stack([loss_sum, correct, torch.tensor(tokens, device=env.device)]))
    return StepOutput(loss=totals[0] / global_masked.clamp(min=1.0),
                      metrics={"accuracy": float(totals[1] / global_masked.clamp(min=1.0)), "tokens": float(totals[2]),
                               "masked": float(global_masked)},
                      tokens=int(totals[2]))


main = trainer_cli(MLMRunConfig, train, __doc__, example="configs/mlm_stage1.yaml",
                   init_help="initial weights only (stage 2 from stage 1): a checkpoint or run directory")


if __name__ == "__main__":
    sys.exit(main())
