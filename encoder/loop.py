"""The one training loop every trainer runs (MLM, contrastive, reranker), and the command line they share.

    def train(config, resume="auto", stop_after=None):
        with training_session(config) as env:              # process group, run-directory lock, seeds
            ...model, data, engine...
            return run_loop(config, env, engine, step_fn, desc="mlm", data_state=data, resume=resume)

A step function does one optimizer step's forward/backward on this rank and returns a `StepOutput` (the
step's global loss and what to log). The loop owns everything around it: the LR schedule, the non-finite
guard, the engine's optimizer step, progress, JSONL/TensorBoard logging, checkpoints (with the data stream's
state when the trainer has one, `data_state`) and exact resume.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from .checkpoint import CheckpointError, CheckpointManager, resolve_checkpoint
from .config import load_config, save_config, to_dict
from .distributed import DistEnv, all_reduce_sum, barrier, broadcast_object, init_distributed, seed_everything
from .engine import Engine
from .losses import LossOutput
from .runlock import RunLock, RunLockedError
from .training import NonFiniteGuard, NonFiniteLossError, Progress, TrainLogger, lr_at, plot_loss_curve


@dataclass
class StepOutput:
    """What a step function returns: `loss` (scalar, global over ranks: the guard checks it), the metrics to
    log beside it, and the tokens the step processed on all ranks (for tokens/s; 0 if not counted)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int = 0


def step_output(result: LossOutput, local_tokens: int, device: torch.device) -> StepOutput:
    """A retrieval trainer's `LossOutput` as a `StepOutput`: loss parts logged as `loss/<part>`, tokens summed
    over ranks."""
    tokens = all_reduce_sum(torch.tensor(float(local_tokens), device=device))
    return StepOutput(loss=result.loss, metrics={f"loss/{k}": float(v) for k, v in result.parts.items()},
                      tokens=int(tokens.item()))


class DataState(Protocol):
    """A data stream whose position is saved in checkpoints (per rank) and restored on resume."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@contextlib.contextmanager
def training_session(config: Any) -> Iterator[DistEnv]:
    """Join the process group, hold `checkpoint.dir` against a second run (rank 0 takes the lock, every rank
    learns the outcome), and seed every generator identically (identical initial weights on every rank)."""
    env = init_distributed(config.train.device)
    lock = RunLock(config.checkpoint.dir) if env.is_main else None
    refused = None
    if lock is not None:
        try:
            lock.acquire()
        except RunLockedError as err:
            refused = str(err)
    refused = broadcast_object(refused)
    if refused:
        raise RunLockedError(refused)
    try:
        seed_everything(config.train.seed)
        yield env
    finally:
        if lock is not None:
            lock.release()


def resume_path(manager: CheckpointManager, resume: str) -> Path | None:
    """none: start fresh; auto: the newest complete checkpoint if any; else the named checkpoint or run dir.
    Checksums are verified once, by `CheckpointManager.load`."""
    if resume in ("none", ""):
        return None
    if resume == "auto":
        return manager.latest_complete(verify=False)
    return resolve_checkpoint(resume, verify=False)


def run_loop(config: Any, env: DistEnv, engine: Engine, step_fn: Callable[[int], StepOutput], *, desc: str,
             data_state: DataState | None = None, resume: str = "auto", stop_after: int | None = None,
             plot_keys: tuple[str, ...] = ("loss", "lr")) -> dict:
    """Train from the resumed (or first) step to `train.max_steps`, or for `stop_after` steps of this call.

    Returns a summary: rank, start_step, step, the last step's metrics, skipped_steps (non-finite losses over
    the whole run), run_dir. The caller holds `training_session`.
    """
    train_cfg, optim_cfg, run_dir = config.train, config.optim, Path(config.checkpoint.dir)
    manager = CheckpointManager(run_dir, config.checkpoint.keep_last)
    guard = NonFiniteGuard(train_cfg.max_nonfinite)
    start_step, tokens_seen = 0, 0
    checkpoint = resume_path(manager, resume)
    if checkpoint is not None:
        loaded = manager.load(checkpoint, state_reader=engine.load_state)
        if data_state is not None:
            data_state.load_state_dict(loaded.sampler)
        guard.load_state_dict(loaded.extra["guard"])
        start_step, tokens_seen = loaded.step, int(loaded.extra.get("tokens", 0))
        if env.is_main:
            print(f"resumed from {checkpoint} at step {start_step}")
    manager.remove_stale_temporaries()
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    logger = TrainLogger(run_dir, enabled=env.is_main, tensorboard=config.log.tensorboard, resume_step=start_step)
    progress = Progress(train_cfg.max_steps, start_step, enabled=env.is_main and config.log.progress, desc=desc)

    def save(at: int) -> None:
        manager.save(at, scheduler={"step": at}, sampler=data_state.state_dict() if data_state is not None else None,
                     extra={"guard": guard.state_dict(), "tokens": tokens_seen}, config=config,
                     state_writer=engine.save_state)

    engine.train()
    step, last = start_step, {}
    while step < train_cfg.max_steps and (stop_after is None or step - start_step < stop_after):
        lr = lr_at(step, train_cfg.max_steps, optim_cfg.warmup_ratio, optim_cfg.lr, optim_cfg.final_lr_ratio)
        out = step_fn(step)
        applied = engine.step(lr, apply=guard.check(out.loss.detach(), step))
        step += 1
        tokens_seen += out.tokens
        loss = float(out.loss.detach())
        shown = {"acc": out.metrics["accuracy"]} if "accuracy" in out.metrics else {}
        rate = progress.update(out.tokens, loss=loss, **shown)
        last = {"loss": loss, **out.metrics, "lr": lr, "skipped": 0.0 if applied else 1.0}
        if applied and engine.last_grad_norm is not None:
            last["grad_norm"] = engine.last_grad_norm
        if out.tokens:
            last.update(tokens_seen=tokens_seen, tokens_per_s=round(rate, 1))
        if step % config.log.every == 0 or step == train_cfg.max_steps:
            logger.log(step, last)
        if step % config.checkpoint.every == 0 or step == train_cfg.max_steps:
            save(step)
    if step > start_step and step % config.checkpoint.every and step != train_cfg.max_steps:
        save(step)  # stopped early (--stop-after): keep the work
    progress.close()
    logger.close()
    if env.is_main and config.log.plot and step == train_cfg.max_steps and logger.path.exists():
        plot_loss_curve(logger.path, run_dir / "loss.png", keys=plot_keys)
    barrier()
    return {"rank": env.rank, "start_step": start_step, "step": step, **last, "skipped_steps": guard.skipped_total,
            "run_dir": str(run_dir)}


# ---- command line -------------------------------------------------------------------------------------------
def build_parser(prog: str, doc: str, example: str, init_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=f"YAML preset, e.g. {example}")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=100 "
                        "optim.lr=2e-4 checkpoint.dir=runs/x (every value is validated, naming the field)")
    parser.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                        help="auto (default): continue from the newest complete checkpoint in checkpoint.dir if "
                        "any (a corrupt newest one is refused); none: start fresh; PATH: that checkpoint")
    parser.add_argument("--init-from", default=None, metavar="CKPT", help=f"{init_help}; same as train.init_from=CKPT")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="checkpoint and exit after N optimizer steps of this invocation (time-limited jobs)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # the deepspeed launcher appends --local_rank; the rank comes from the environment
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def trainer_cli(run_config_cls: type, train_fn: Callable[..., dict], doc: str, *, example: str,
                init_help: str) -> Callable[[list[str] | None], int]:
    """A trainer's `main(argv) -> exit status`, `python -m <train_fn's module>`: see `run_cli`."""

    module = train_fn.__module__
    if module == "__main__":  # run as `python -m encoder.train_x`: the module's own name is in its spec
        module = getattr(sys.modules["__main__"].__spec__, "name", module)

    def main(argv: list[str] | None = None) -> int:
        return run_cli(argv, run_config_cls, train_fn, prog=f"python -m {module}", doc=doc, example=example,
                       init_help=init_help)

    return main


def run_cli(argv: list[str] | None, run_config_cls: type, train_fn: Callable[..., dict], *, prog: str, doc: str,
            example: str, init_help: str) -> int:
    """Parse, load and validate the config, train; exit 2 on bad input or a refused checkpoint / locked run
    directory, 3 on repeated non-finite losses."""
    args = build_parser(prog, doc, example, init_help).parse_args(argv)
    overrides = list(args.overrides) + ([f"train.init_from={args.init_from}"] if args.init_from else [])
    try:
        if args.stop_after is not None and args.stop_after < 1:
            raise ValueError(f"--stop-after: must be >= 1, got {args.stop_after}")
        config = load_config(run_config_cls, args.config, overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(to_dict(config), sort_keys=False))
            return 0
        summary = train_fn(config, resume=args.resume, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError, CheckpointError, RunLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if summary["rank"] == 0:
        shown = [f"step {summary['step']}"] + [f"{key} {summary[key]:.4f}" for key in ("loss", "accuracy")
                                                if summary.get(key) is not None]
        shown += [f"skipped steps {summary['skipped_steps']}", f"run dir {summary['run_dir']}"]
        if summary.get("final"):
            shown.append(f"final model {summary['final']}")
        print("done: " + ", ".join(shown))
    return 0
