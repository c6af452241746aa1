"""Training pieces every trainer shares (MLM, contrastive, reranker): the run-config sections they have in
common, optimizer, LR schedule, logging, progress, the non-finite-loss guard and the loss-curve plot. The loop
itself is `encoder.loop`; the engines (plain PyTorch / DDP vs DeepSpeed) live in `encoder.engine`; checkpoints
in `encoder.checkpoint`.

Every section validates itself when it is built (`__post_init__`), so a bad value is reported with its dotted
name (`optim.lr: must be positive, got 0`) when the config is loaded, before any work.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ModelConfig, config_field
from .distributed import all_reduce_sum
from .engine import Engine, build_engine, set_lr

__all__ = ["CheckpointConfig", "Engine", "LogConfig", "NonFiniteGuard", "NonFiniteLossError", "OptimConfig",
           "Progress", "RunConfig", "TrainConfig", "TrainLogger", "at_least", "build_engine", "build_optimizer",
           "lr_at", "parameter_groups", "plot_loss_curve", "read_metrics", "require", "set_lr"]
log = logging.getLogger(__name__)


def require(condition: bool, field_name: str, message: str, value: Any) -> None:
    """Raise `ValueError("<field>: <message>, got <value>")` unless `condition` holds."""
    if not condition:
        raise ValueError(f"{field_name}: {message}, got {value!r}")


# ---- run-config sections every trainer has ----------------------------------------------------------------
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

    def __post_init__(self) -> None:
        require(math.isfinite(self.lr) and self.lr > 0, "optim.lr", "must be positive", self.lr)
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                "expected two values in [0, 1)", list(self.betas))
        require(self.eps > 0, "optim.eps", "must be positive", self.eps)
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        require(0 <= self.warmup_ratio <= 1, "optim.warmup_ratio", "must be in [0, 1]", self.warmup_ratio)
        require(0 <= self.final_lr_ratio <= 1, "optim.final_lr_ratio", "must be in [0, 1]", self.final_lr_ratio)
        require(self.max_grad_norm >= 0, "optim.max_grad_norm", "must be >= 0 (0 = no clipping)", self.max_grad_norm)
        for prefix, scale in self.lr_scales.items():
            require(isinstance(scale, (int, float)) and scale > 0, f"optim.lr_scales.{prefix}", "must be positive",
                    scale)


def at_least(minimum: float, default: Any, note: str = "") -> Any:
    """A `train:` field whose lower bound `TrainConfig.__post_init__` checks (subclasses declare bounds this
    way instead of overriding `__post_init__`)."""
    return field(default=default, metadata={"at_least": (minimum, note)})


@dataclass
class TrainConfig:
    """The `train:` section; trainers subclass it for their own fields and defaults."""

    max_steps: int = at_least(1, 1000)  # optimizer steps; the LR schedule spans exactly these
    precision: str = "bf16"  # bf16 autocast (CPU and CUDA) or fp32
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    engine: str = "plain"  # plain (one process / DDP under torchrun), deepspeed, auto
    deepspeed_config: str = "launch/deepspeed/zero1.json"
    init_from: str = ""  # initial weights: a checkpoint / run directory, or a final/ directory
    max_nonfinite: int = at_least(1, 5)  # stop after this many non-finite losses in a row

    def __post_init__(self) -> None:
        for spec in fields(self):
            if "at_least" in spec.metadata:
                minimum, note = spec.metadata["at_least"]
                value = getattr(self, spec.name)
                require(value >= minimum, f"train.{spec.name}", f"must be >= {minimum:g}{note}", value)
        require(self.precision in ("fp32", "bf16"), "train.precision", "expected fp32 or bf16 (fp16 is not "
                "supported)", self.precision)
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "train.device",
                "expected auto, cpu, cuda or cuda:N", self.device)
        require(self.engine in ("plain", "deepspeed", "auto"), "train.engine", "expected plain, deepspeed or auto",
                self.engine)


@dataclass
class CheckpointConfig:
    dir: str = "runs/mlm_stage1"  # the run directory
    every: int = 1000  # optimizer steps between checkpoints (and one at the end)
    keep_last: int = 3

    def __post_init__(self) -> None:
        require(bool(str(self.dir).strip()), "checkpoint.dir", "must name a directory", self.dir)
        require(self.every >= 1, "checkpoint.every", "must be >= 1", self.every)
        require(self.keep_last >= 1, "checkpoint.keep_last", "must be >= 1", self.keep_last)


@dataclass
class LogConfig:
    every: int = 1  # optimizer steps between JSONL / TensorBoard records
    tensorboard: bool = True
    progress: bool = True
    plot: bool = True  # loss.png from metrics.jsonl at the end

    def __post_init__(self) -> None:
        require(self.every >= 1, "log.every", "must be >= 1", self.every)


@dataclass
class RunConfig:
    """The YAML sections every trainer has; each trainer's run config adds its own `data` and `train` (and
    `loss`) sections, redeclaring `train` with its subclass of TrainConfig."""

    model: ModelConfig = config_field(ModelConfig)
    optim: OptimConfig = config_field(OptimConfig)
    train: TrainConfig = config_field(TrainConfig)
    checkpoint: CheckpointConfig = config_field(CheckpointConfig)
    log: LogConfig = config_field(LogConfig)


# ---- optimizer --------------------------------------------------------------------------------------------
def parameter_groups(model: nn.Module, weight_decay: float,
                     lr_scales: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: decayed matrices/embeddings, and biases + LayerNorm parameters without decay.

    `lr_scales` maps parameter-name prefixes (e.g. "head.sparse_linear") to LR multipliers: matching
    parameters get groups of their own carrying `lr_scale`, which `set_lr` applies to the schedule's LR.
    The longest matching prefix wins; a prefix that matches nothing is an error (a typo would be silent).
    """
    lr_scales = dict(lr_scales or {})
    unused = [p for p in lr_scales if not any(n.startswith(p) for n, _ in model.named_parameters())]
    if unused:
        raise ValueError(f"optim.lr_scales: no parameter name starts with {unused}")
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        prefix = max((p for p in lr_scales if name.startswith(p)), key=len, default=None)
        decayed = not (id(param) in no_decay_ids or name.endswith("bias") or param.dim() < 2)
        groups.setdefault((lr_scales[prefix] if prefix else 1.0, decayed), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0,
             **({} if scale == 1.0 else {"lr_scale": scale})} for (scale, decayed), params in groups.items()]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 1e-5, betas: tuple[float, float] = (0.9, 0.98),
                    eps: float = 1e-6, decoupled: bool = True,
                    lr_scales: Mapping[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW with no decay on biases / LayerNorm, and per-prefix LR multipliers (see `parameter_groups`).

    decoupled=True is MosaicBERT's LR-decoupled decay (mGTE's recipe): each step shrinks weights by
    `weight_decay * lr_t / lr_peak`, independent of the LR's magnitude. torch's AdamW shrinks by
    `lr_t * wd`, so passing wd / lr_peak gives exactly that, with a stock optimizer DeepSpeed accepts.
    Keep the schedule's peak equal to `lr` for this to hold.
    """
    effective = weight_decay / lr if decoupled and weight_decay > 0 else weight_decay
    groups = parameter_groups(model, effective, lr_scales)
    for group in groups:  # the first step must already be scaled (set_lr runs before every step too)
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_at(step: int, total: int, warmup_ratio: float, peak: float, final_ratio: float = 0.0) -> float:
    """LR of optimizer update `step` (0-based): linear warm-up over ceil(ratio * total) updates to `peak`,
    then linear decay to `final_ratio * peak` at `total`. A pure function, so resume needs only the step."""
    if total <= 0:
        raise ValueError(f"total: must be positive, got {total}")
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return peak * (step + 1) / warmup  # the first update already moves (no wasted lr=0 step)
    remaining = max(0.0, (total - step) / max(1, total - warmup))
    return peak * (final_ratio + (1.0 - final_ratio) * remaining)


# ---- non-finite guard -------------------------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Skip an update whose loss is NaN/inf (on any rank), warn, and stop after `max_consecutive` in a row."""

    def __init__(self, max_consecutive: int = 5) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_total = 0

    def check(self, loss: torch.Tensor, step: int) -> bool:
        """True if the step may be applied. `loss` is a scalar tensor; all ranks get the same answer."""
        bad = all_reduce_sum((~torch.isfinite(loss.detach().float())).float().reshape(1))
        if float(bad.item()) == 0:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped_total += 1
        warnings.warn(f"step {step}: non-finite loss ({float(loss):.4g}); skipping this update "
                      f"({self.consecutive} in a row, limit {self.max_consecutive})", RuntimeWarning, stacklevel=2)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(f"step {step}: {self.consecutive} consecutive non-finite losses; stopping "
                                     "(lower the LR, check the data, or resume from an earlier checkpoint)")
        return False

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive, self.skipped_total = int(state["consecutive"]), int(state["skipped_total"])


# ---- logging ----------------------------------------------------------------------------------------------
class TrainLogger:
    """Metrics as JSONL (one object per logged step) and TensorBoard scalars; rank 0 only, others no-op.

    On resume from step S, records with step > S left by the interrupted run are dropped, so the file
    reads as one uninterrupted run.
    """

    def __init__(self, directory: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None, filename: str = "metrics.jsonl") -> None:
        self.enabled = enabled
        self.path = Path(directory) / filename
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate_after(resume_step if resume_step is not None else -1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(directory) / "tensorboard"))
            except ImportError:  # tensorboard is optional; JSONL is the record
                log.warning("tensorboard is not installed; logging JSONL only")

    def _truncate_after(self, step: int) -> None:
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line torn by a kill: drop it
        return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, keys: Iterable[str] = ("loss",)) -> Path | None:
    """Plot `keys` against step from a JSONL metrics file into a PNG; None when there is nothing to plot."""
    records = read_metrics(metrics_path)
    keys = list(keys)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


# ---- progress ---------------------------------------------------------------------------------------------
class Progress:
    """tqdm bar over optimizer steps with loss, tokens/s and ETA (from tqdm's rate); rank 0 only."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train") -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
        self.started = time.perf_counter()
        self.tokens = 0

    def update(self, tokens: int, **postfix: float) -> float:
        """Advance one step of `tokens` (global); returns tokens/s since this process started."""
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        if self.bar is not None:
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
            self.bar.set_postfix(**shown, tok_s=f"{rate:,.0f}", refresh=False)
            self.bar.update(1)
        return rate

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
