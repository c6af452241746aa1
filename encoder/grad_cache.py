"""GradCache (Gao et al. 2021): the exact full-batch contrastive gradient with one sub-batch of activations at a
time. All sub-batches are encoded without grad -> the full-batch loss and its gradient wrt the representations
-> each sub-batch again with grad (the same dropout masks, by replaying the RNG), back-propagating the cached
gradient. Used by the TRM and the reranker trainers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .batch import UnpaddedBatch
from .inference import length_batches
from .losses import LossOutput


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
