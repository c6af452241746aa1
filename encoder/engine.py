"""Training engines: who owns the optimizer step, gradient sync across ranks, mixed precision and the
model/optimizer part of a checkpoint. Every DeepSpeed-specific line of the project lives in this file.

    plain      one process, or DDP under torchrun (gradients all-reduced at the accumulation boundary)
    deepspeed  ZeRO stage 1/2/3 from a JSON file in launch/deepspeed/ (multi-GPU, multi-node)

The loop is the same for both:

    for i, micro in enumerate(micro_batches):
        with engine.accumulate(is_boundary=i == last):
            with engine.autocast():
                out = engine(micro)
            engine.backward(loss_sum / global_count)   # gradient = sum over ranks (the engine undoes averaging)
    applied = engine.step(lr, apply=finite)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import DistEnv, rank


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's LR on every group, times the group's own `lr_scale` (see `parameter_groups`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class Engine:
    """Base: the unwrapped `model` (save, eval, set_rope) and the optimizer it steps."""

    name = "base"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv, precision: str = "fp32",
                 max_grad_norm: float = 0.0) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision: expected fp32 or bf16, got {precision!r} (fp16 is not supported)")
        self.model, self.optimizer, self.env = model, optimizer, env
        self.precision, self.max_grad_norm = precision, max_grad_norm
        # the gradient norm of the last applied step, before clipping (None: not known); logged beside the loss,
        # because a norm far above max_grad_norm means clipping, not the learning rate, sets the step size
        self.last_grad_norm: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def accumulate(self, is_boundary: bool) -> Iterator[None]:
        yield

    def backward(self, loss: Tensor) -> None:
        raise NotImplementedError

    def step(self, lr: float, apply: bool = True) -> bool:
        raise NotImplementedError

    def save_state(self, directory: Path) -> None:
        raise NotImplementedError

    def load_state(self, directory: Path) -> None:
        raise NotImplementedError

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()


class PlainEngine(Engine):
    """PyTorch AdamW; DistributedDataParallel when the launcher started several processes."""

    name = "plain"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv, precision: str = "fp32",
                 max_grad_norm: float = 0.0) -> None:
        super().__init__(model, optimizer, env, precision, max_grad_norm)
        self.wrapped: nn.Module = model
        if env.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [env.device.index] if env.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=device_ids)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @contextlib.contextmanager
    def accumulate(self, is_boundary: bool) -> Iterator[None]:
        # DDP decides in forward whether backward all-reduces: sync only on the last micro-batch
        if self.env.is_distributed and not is_boundary:
            with self.wrapped.no_sync():
                yield
        else:
            yield

    def backward(self, loss: Tensor) -> None:
        # DDP averages over ranks; our losses are already normalised by the global count, so undo the mean
        (loss * self.env.world_size).backward()

    def step(self, lr: float, apply: bool = True) -> bool:
        if apply:
            set_lr(self.optimizer, lr)
            limit = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")  # inf: measure, never clip
            self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return apply

    def save_state(self, directory: Path) -> None:
        if rank() == 0:
            torch.save(self.model.state_dict(), directory / "model.pt")
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")

    def load_state(self, directory: Path) -> None:
        device = self.env.device
        self.model.load_state_dict(torch.load(directory / "model.pt", map_location=device, weights_only=True))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=device,
                                                  weights_only=True))


def deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return False
    return True


def deepspeed_config(path: str | Path, precision: str, grad_accum: int, world_size: int,
                     max_grad_norm: float) -> dict[str, Any]:
    """The JSON preset with the fields our run config owns filled in (one source of truth for each)."""
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    # batches are token budgets, not sequence counts: one "micro batch" is one packed batch per rank
    config["train_micro_batch_size_per_gpu"] = 1
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = grad_accum * world_size
    config["bf16"] = {**config.get("bf16", {}), "enabled": precision == "bf16"}
    config["fp16"] = {"enabled": False}
    config["gradient_clipping"] = max_grad_norm
    config.setdefault("steps_per_print", 1 << 30)  # we log ourselves
    config.setdefault("wall_clock_breakdown", False)
    return config


class DeepSpeedEngine(Engine):
    """`deepspeed.initialize` around our AdamW; ZeRO partitions optimizer state / gradients / parameters."""

    name = "deepspeed"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv, precision: str,
                 config_path: str | Path, grad_accum: int = 1, max_grad_norm: float = 0.0) -> None:
        super().__init__(model, optimizer, env, precision, max_grad_norm)
        try:
            import deepspeed
        except ImportError as err:
            raise RuntimeError("train.engine=deepspeed: deepspeed is not installed (pip install deepspeed), "
                               "or use train.engine=plain") from err
        import torch.distributed as dist

        if env.device.type == "cpu":
            # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (minutes on a fresh machine) that
            # only speeds up inference collectives; gloo serves training. Marking it incompatible skips the build.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if env.device.type == "cuda" else "gloo",
                                       verbose=False)
        self.config = deepspeed_config(config_path, precision, grad_accum, env.world_size, max_grad_norm)
        self.zero_stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        self.model = self.ds.module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ds(*args, **kwargs)

    @contextlib.contextmanager
    def accumulate(self, is_boundary: bool) -> Iterator[None]:
        # we drive the boundary ourselves: the number of micro-batches per step is the config's, but the
        # step is called once, after the last one (DeepSpeed's documented manual-boundary style)
        self.ds.set_gradient_accumulation_boundary(is_boundary)
        yield

    def backward(self, loss: Tensor) -> None:
        # ZeRO averages gradients over ranks and, by default, divides by the accumulation steps; our loss is
        # already a global mean, so undo the rank average and skip the accumulation scaling
        self.ds.backward(loss * self.env.world_size, scale_wrt_gas=False)

    def step(self, lr: float, apply: bool = True) -> bool:
        set_lr(self.optimizer, lr)
        # a skipped (non-finite) step still goes through ds.step: ZeRO sees the non-finite gradient norm,
        # drops the gradients and does not update, which keeps its internal counters consistent on all ranks
        self.ds.step()
        applied = bool(self.ds.was_step_applied())
        norm = self.ds.get_global_grad_norm() if applied else None
        self.last_grad_norm = float(norm) if norm is not None else None
        if applied and not apply:
            raise RuntimeError("DeepSpeed applied an update with a non-finite loss; use ZeRO stage >= 1 "
                               "(its overflow check skips such steps)")
        return applied

    def _full_state_dict(self) -> dict[str, Tensor]:
        """The full weights in fp32, parameters taken from the optimizer's fp32 master copies (with bf16 the
        module's own parameters are bf16: `.float()` of those would hand `--init-from`, export and evaluation
        weights rounded to 8 mantissa bits). A collective: every rank calls it, in the same parameter order."""
        from deepspeed.utils import safe_get_full_fp32_param

        masters: dict[int, Tensor] = {}
        state = {}
        for name, value in self.model.state_dict(keep_vars=True).items():
            if isinstance(value, nn.Parameter):
                if id(value) not in masters:  # tied weights appear under several names
                    full = safe_get_full_fp32_param(value)
                    masters[id(value)] = (full if full is not None else value).detach().float().cpu()
                state[name] = masters[id(value)]
            else:
                state[name] = value.detach().cpu()
        return state

    def save_state(self, directory: Path) -> None:
        self.ds.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)
        state = self._full_state_dict()
        if rank() == 0:  # full weights in one file: `--init-from`, export and evaluation read this
            torch.save(state, directory / "model.pt")

    def load_state(self, directory: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(directory / "deepspeed"), tag="state", load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"{directory / 'deepspeed'}: DeepSpeed could not load this checkpoint")

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()


def build_engine(kind: str, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv,
                 precision: str = "fp32", grad_accum: int = 1, max_grad_norm: float = 0.0,
                 deepspeed_config_path: str | Path | None = None) -> Engine:
    """`kind`: plain, deepspeed, or auto (deepspeed when a config is given and deepspeed is importable)."""
    if kind == "auto":
        kind = "deepspeed" if deepspeed_config_path and deepspeed_available() else "plain"
    if kind == "plain":
        return PlainEngine(model, optimizer, env, precision, max_grad_norm)
    if kind == "deepspeed":
        if not deepspeed_config_path:
            raise ValueError("train.deepspeed_config: required with train.engine=deepspeed "
                             "(e.g. launch/deepspeed/zero2.json)")
        return DeepSpeedEngine(model, optimizer, env, precision, deepspeed_config_path, grad_accum, max_grad_norm)
    raise ValueError(f"train.engine: expected plain, deepspeed or auto, got {kind!r}")
