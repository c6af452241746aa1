"""MLM pre-training on token shards (mGTE recipe: 30% masking, two stages 2048/θ=10k then 8192/θ=160k).

    python -m encoder.train_mlm --config configs/tiny_mlm_stage1.yaml data.shards=runs/data --resume auto
    python -m encoder.train_mlm --config configs/tiny_mlm_stage2.yaml --init-from runs/tiny_mlm_stage1
    deepspeed --num_gpus 8 -m encoder.train_mlm --config configs/mlm_stage1.yaml train.engine=deepspeed
    torchrun --nproc_per_node 8 -m encoder.train_mlm --config configs/mlm_stage1.yaml

One optimizer step = `train.grad_accum` packed micro-batches of at most `data.max_tokens` tokens on each
rank. The loss is the sum of token cross-entropies over the masked tokens of the whole step on all ranks
divided by their global count, so every masked token weighs the same whatever its batch or rank.
Everything the run writes lives in `checkpoint.dir`: config.yaml, metrics.jsonl, tensorboard/, loss.png,
ckpt-NNNNNN/ (model, optimizer, sampler position, RNG states; see encoder.checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from data_prep.batching import TokenBudgetBatchSampler
from data_prep.collator import MLMCollator
from data_prep.sampling import LanguageMixture
from data_prep.shards import ShardReader
from data_prep.tokenizer import SpecialIds

from .batch import IGNORE_INDEX, UnpaddedBatch
from .checkpoint import CheckpointError, CheckpointManager, resolve_checkpoint
from .config import ModelConfig, config_field, load_config, save_config
from .distributed import DistEnv, all_reduce_sum, barrier, init_distributed, seed_everything
from .heads import MaskedLM
from .training import (
    NonFiniteGuard,
    NonFiniteLossError,
    Progress,
    TrainLogger,
    build_engine,
    build_optimizer,
    lr_at,
    plot_loss_curve,
)


# ---- the run config ----------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    shards: str = "runs/data"  # a data_prep shard directory (manifest.json + shards/)
    max_length: int = 2048  # longer sequences are cut to this (keeping </s>); stage 1 2048, stage 2 8192
    max_tokens: int = 65536  # token budget of one packed micro-batch on one rank
    max_sequences: int | None = None  # optional cap on sequences per micro-batch
    sort_window: int = 4096  # length grouping window of the sampler
    alpha: float = 0.5  # language sampling q_i ∝ p_i^α (mGTE / XLM-R)
    mlm_probability: float = 0.3  # mGTE masks 30%
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    verify_shards: bool = False  # sha256 every shard at start-up (slow on TBs)


@dataclass
class OptimConfig:
    lr: float = 5e-4  # peak LR (paper Table 8; the model card says 2e-4 for stage 1)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 1e-5
    decoupled_weight_decay: bool = True  # MosaicBERT-style: decay ∝ lr_t / lr_peak, not lr_t
    warmup_ratio: float = 0.06
    final_lr_ratio: float = 0.0  # linear decay to this fraction of the peak
    max_grad_norm: float = 0.0  # 0 = no clipping (the reference uses none)
    lr_scales: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> LR multiplier


@dataclass
class TrainConfig:
    max_steps: int = 250_000  # optimizer steps; the LR schedule spans exactly these
    grad_accum: int = 1  # micro-batches per optimizer step on each rank
    precision: str = "bf16"  # bf16 autocast (CPU and CUDA) or fp32
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    engine: str = "plain"  # plain (one process / DDP under torchrun), deepspeed, auto
    deepspeed_config: str = "launch/deepspeed/zero2.json"
    init_from: str = ""  # weights only: a checkpoint directory or a run directory (its newest checkpoint)
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row


@dataclass
class CheckpointConfig:
    dir: str = "runs/mlm_stage1"  # the run directory
    every: int = 1000  # optimizer steps between checkpoints (and one at the end)
    keep_last: int = 3


@dataclass
class LogConfig:
    every: int = 1  # optimizer steps between JSONL / TensorBoard records
    tensorboard: bool = True
    progress: bool = True
    plot: bool = True  # loss.png from metrics.jsonl at the end


@dataclass
class MLMRunConfig:
    model: ModelConfig = config_field(ModelConfig)
    data: DataConfig = config_field(DataConfig)
    optim: OptimConfig = config_field(OptimConfig)
    train: TrainConfig = config_field(TrainConfig)
    checkpoint: CheckpointConfig = config_field(CheckpointConfig)
    log: LogConfig = config_field(LogConfig)


# ---- data ---------------------------------------------------------------------------------------------------
class TruncatedSequences:
    """Shard sequences cut to `max_length` (the last kept token replaced by </s>), lengths to match."""

    def __init__(self, reader: ShardReader, max_length: int, sep_id: int) -> None:
        self.reader, self.max_length, self.sep_id = reader, max_length, sep_id
        self.lengths = np.minimum(reader.lengths, max_length)

    def __getitem__(self, index: int) -> np.ndarray:
        ids = np.asarray(self.reader[index], dtype=np.int64)
        if len(ids) > self.max_length:
            ids = ids[: self.max_length].copy()
            ids[-1] = self.sep_id
        return ids


def special_ids_from_manifest(reader: ShardReader) -> SpecialIds:
    info = reader.manifest["tokenizer"]
    return SpecialIds(**{f.name: int(info[f.name]) for f in fields(SpecialIds)})


class MLMData:
    """Per-rank stream of MLM micro-batches; `state_dict` resumes at the exact next batch and mask."""

    def __init__(self, config: DataConfig, env: DistEnv, seed: int) -> None:
        reader = ShardReader(config.shards, verify=config.verify_shards)
        self.special = special_ids_from_manifest(reader)
        self.sequences = TruncatedSequences(reader, config.max_length, self.special.sep)
        mixture = LanguageMixture(self.sequences.lengths, reader.language_ids, reader.languages, config.alpha,
                                  seed=seed)
        self.sampler = TokenBudgetBatchSampler(self.sequences.lengths, config.max_tokens, seed=seed,
                                               indices=mixture.epoch_indices, rank=env.rank,
                                               world_size=env.world_size, max_sequences=config.max_sequences,
                                               sort_window=config.sort_window)
        # each rank masks with its own stream
        self.collator = MLMCollator(self.special, config.mlm_probability, config.mask_fraction,
                                    config.random_fraction, seed=seed * 1_000_003 + env.rank)
        self._batches = self._forever()

    def _forever(self):
        while True:  # the sampler advances its epoch at the end of each pass
            yield from self.sampler

    def next_batch(self) -> UnpaddedBatch:
        return self.collator([self.sequences[i] for i in next(self._batches)])

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "collator": self.collator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.collator.load_state_dict(state["collator"])
        self._batches = self._forever()


# ---- the trainer --------------------------------------------------------------------------------------------
def build_model(config: MLMRunConfig, special: SpecialIds) -> MaskedLM:
    if config.model.vocab_size < special.vocab_size:
        raise ValueError(f"model.vocab_size: {config.model.vocab_size} is smaller than the tokenizer's "
                         f"{special.vocab_size} ids (set model.vocab_size={special.padded_vocab_size})")
    model = MaskedLM(config.model)
    if config.train.init_from:
        path = resolve_checkpoint(config.train.init_from)
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        print(f"initialised weights from {path}")
    # stage 2 continues stage 1's weights with a larger RoPE base: the rotary tables follow the config
    model.encoder.set_rope(config.model.rope_theta)
    model.encoder.set_gradient_checkpointing(config.model.gradient_checkpointing)
    return model


def train(config: MLMRunConfig, resume: str = "none", stop_after: int | None = None) -> dict:
    """Run (or continue) pre-training; returns a summary: start_step, step, the last step's metrics,
    skipped_steps (non-finite losses over the whole run), run_dir."""
    train_cfg, run_dir = config.train, Path(config.checkpoint.dir)
    env = init_distributed(train_cfg.device)
    seed_everything(train_cfg.seed)  # identical initial weights on every rank
    data = MLMData(config.data, env, train_cfg.seed)
    model = build_model(config, data.special).to(env.device)
    seed_everything(train_cfg.seed, rank_offset=env.rank)  # distinct dropout streams per rank
    optim_cfg = config.optim
    optimizer = build_optimizer(model, optim_cfg.lr, optim_cfg.weight_decay, optim_cfg.betas, optim_cfg.eps,
                                optim_cfg.decoupled_weight_decay, optim_cfg.lr_scales)
    engine = build_engine(train_cfg.engine, model, optimizer, env, train_cfg.precision, train_cfg.grad_accum,
                          optim_cfg.max_grad_norm, train_cfg.deepspeed_config)
    manager = CheckpointManager(run_dir, config.checkpoint.keep_last)
    guard = NonFiniteGuard(train_cfg.max_nonfinite)
    start_step, tokens_seen = 0, 0
    checkpoint = _resume_path(manager, resume)
    if checkpoint is not None:
        loaded = manager.load(checkpoint, state_reader=engine.load_state)
        data.load_state_dict(loaded.sampler)
        guard.load_state_dict(loaded.extra["guard"])
        start_step, tokens_seen = loaded.step, loaded.extra["tokens"]
        if env.is_main:
            print(f"resumed from {checkpoint} at step {start_step}")
    manager.remove_stale_temporaries()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    logger = TrainLogger(run_dir, enabled=env.is_main, tensorboard=config.log.tensorboard, resume_step=start_step)
    progress = Progress(train_cfg.max_steps, start_step, enabled=env.is_main and config.log.progress, desc="mlm")

    def save(step: int) -> None:
        manager.save(step, scheduler={"step": step}, sampler=data.state_dict(),
                     extra={"guard": guard.state_dict(), "tokens": tokens_seen}, config=config,
                     state_writer=engine.save_state)

    engine.train()
    step, last = start_step, {}
    while step < train_cfg.max_steps and (stop_after is None or step - start_step < stop_after):
        micro_batches = [data.next_batch() for _ in range(train_cfg.grad_accum)]
        metrics = train_step(engine, micro_batches, env, guard, step,
                             lr_at(step, train_cfg.max_steps, optim_cfg.warmup_ratio, optim_cfg.lr,
                                   optim_cfg.final_lr_ratio))
        step += 1
        tokens_seen += int(metrics["tokens"])
        rate = progress.update(int(metrics["tokens"]), loss=metrics["loss"], acc=metrics["accuracy"])
        last = {**metrics, "tokens_seen": tokens_seen, "tokens_per_s": round(rate, 1)}
        if step % config.log.every == 0 or step == train_cfg.max_steps:
            logger.log(step, last)
        if step % config.checkpoint.every == 0 or step == train_cfg.max_steps:
            save(step)
    if step > start_step and step % config.checkpoint.every and step != train_cfg.max_steps:
        save(step)  # stopped early (--stop-after): keep the work
    progress.close()
    logger.close()
    if env.is_main and config.log.plot and step == train_cfg.max_steps and logger.path.exists():
        plot_loss_curve(logger.path, run_dir / "loss.png", keys=("loss", "accuracy", "lr"))
    barrier()
    return {"rank": env.rank, "start_step": start_step, "step": step, **last,
            "skipped_steps": guard.skipped_total, "run_dir": str(run_dir)}


def train_step(engine, micro_batches: list[UnpaddedBatch], env: DistEnv, guard: NonFiniteGuard, step: int,
               lr: float) -> dict[str, float]:
    """One optimizer step over this rank's micro-batches; metrics are global (summed over ranks)."""
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
    loss = totals[0] / global_masked.clamp(min=1.0)
    applied = engine.step(lr, apply=guard.check(loss, step))
    return {"loss": float(loss), "accuracy": float(totals[1] / global_masked.clamp(min=1.0)), "lr": lr,
            "tokens": float(totals[2]), "masked": float(global_masked), "skipped": 0.0 if applied else 1.0}


def _resume_path(manager: CheckpointManager, resume: str) -> Path | None:
    if resume in ("none", ""):
        return None
    if resume == "auto":
        return manager.latest_complete()  # None on a fresh run; raises on a corrupt newest checkpoint
    return resolve_checkpoint(resume)


# ---- command line -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.train_mlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/mlm_stage1.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100 "
                        "optim.lr=2e-4 data.shards=runs/data checkpoint.dir=runs/mlm1")
    parser.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                        help="auto (default): continue from the newest complete checkpoint in checkpoint.dir if "
                        "any (a corrupt newest one is refused); none: start fresh; PATH: that checkpoint")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="initial weights only (stage 2 from stage 1): a checkpoint or run directory; "
                        "same as train.init_from=CKPT")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="checkpoint and exit after N optimizer steps of this invocation (time-limited jobs)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # the deepspeed launcher appends --local_rank; the rank comes from the environment
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"train.init_from={args.init_from}"] if args.init_from else [])
    try:
        config = load_config(MLMRunConfig, args.config, overrides)
        config.model.validate()
        if args.print_config:
            import yaml

            from .config import to_dict

            print(yaml.safe_dump(to_dict(config), sort_keys=False))
            return 0
        summary = train(config, resume=args.resume, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if summary["rank"] == 0 and summary.get("loss") is not None:
        print(f"done: step {summary['step']}, loss {summary['loss']:.4f}, accuracy {summary['accuracy']:.4f}, "
              f"skipped steps {summary['skipped_steps']}, run dir {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
