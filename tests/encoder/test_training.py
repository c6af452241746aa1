"""Shared loop pieces: optimizer groups, the LR schedule, the non-finite guard, JSONL logging and the plot."""

from __future__ import annotations

import math

import pytest
import torch

from encoder.training import (
    NonFiniteGuard,
    NonFiniteLossError,
    TrainLogger,
    build_optimizer,
    lr_at,
    plot_loss_curve,
    read_metrics,
    set_lr,
)


def test_no_weight_decay_on_bias_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=1e-5)
    decay, no_decay = optimizer.param_groups
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[1].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].bias), id(model[2].weight), id(model[2].bias)}
    assert no_decay["weight_decay"] == 0.0
    # LR-decoupled: lr * wd_group == wd, so each step shrinks by wd * lr_t / lr_peak
    assert math.isclose(decay["weight_decay"] * 1e-3, 1e-5)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6


def test_lr_scales_give_prefixed_parameters_their_own_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0, lr_scales={"1": 0.1})
    scaled = [g for g in optimizer.param_groups if g.get("lr_scale") == 0.1]
    assert {id(p) for g in scaled for p in g["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert all(math.isclose(g["lr"], 1e-4) for g in scaled)  # already scaled before the first set_lr
    set_lr(optimizer, 2e-3)
    assert sorted(g["lr"] for g in optimizer.param_groups if g["params"]) == pytest.approx([2e-4, 2e-4, 2e-3, 2e-3])
    before = model[1].weight.detach().clone(), model[0].weight.detach().clone()
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # Adam's first step moves every weight by ~lr: the scaled layer 10x less
    moved = [(w - b).abs().max().item() for w, b in zip((model[1].weight, model[0].weight), before)]
    assert moved[0] == pytest.approx(2e-4, rel=1e-2) and moved[1] == pytest.approx(2e-3, rel=1e-2)
    with pytest.raises(ValueError, match="lr_scales"):
        build_optimizer(model, lr=1e-3, lr_scales={"head.typo": 0.1})


def test_lr_schedule_warmup_then_linear_decay():
    total, peak = 100, 1e-3
    lrs = [lr_at(s, total, 0.06, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 6) and lrs[5] == pytest.approx(peak)
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 5
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # monotone decay after warm-up
    assert lr_at(total, total, 0.06, peak) == 0.0
    assert lrs[50] == lr_at(50, total, 0.06, peak)  # pure: same answer every time


def test_nonfinite_guard_skips_then_stops():
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.check(torch.tensor(1.0), step=0)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        assert not guard.check(torch.tensor(float("nan")), step=1)
    assert guard.check(torch.tensor(2.0), step=2) and guard.consecutive == 0
    with pytest.warns(RuntimeWarning):
        guard.check(torch.tensor(float("inf")), step=3)
        guard.check(torch.tensor(float("nan")), step=4)
        with pytest.raises(NonFiniteLossError, match="3 consecutive"):
            guard.check(torch.tensor(float("nan")), step=5)


def test_logger_truncates_after_resume_step_and_plots(tmp_path):
    logger = TrainLogger(tmp_path, tensorboard=True)
    for step in range(1, 6):
        logger.log(step, {"loss": 5.0 - step, "accuracy": 0.1 * step})
    logger.close()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "lo')  # torn by a kill
    TrainLogger(tmp_path, tensorboard=False, resume_step=3).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    png = plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "loss.png", keys=("loss", "accuracy"))
    assert png.stat().st_size > 1000 and list((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5])
def test_plain_engine_reports_the_gradient_norm_before_clipping(max_grad_norm):
    from encoder.distributed import DistEnv
    from encoder.engine import PlainEngine

    weight = torch.nn.Parameter(torch.zeros(2))
    model = torch.nn.Module()
    model.weight = weight
    engine = PlainEngine(model, torch.optim.SGD([weight], lr=1.0), DistEnv(), max_grad_norm=max_grad_norm)
    assert engine.last_grad_norm is None
    engine.backward((weight * torch.tensor([3.0, 4.0])).sum())  # gradient (3, 4): norm 5
    engine.step(lr=1.0)
    assert engine.last_grad_norm == pytest.approx(5.0)
    # the update is the clipped gradient when a limit is set, the whole one otherwise
    expected = [-3.0, -4.0] if max_grad_norm == 0 else [-0.3, -0.4]
    assert weight.detach().tolist() == pytest.approx(expected)
