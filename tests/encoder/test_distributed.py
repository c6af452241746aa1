"""Negatives gathered across 2 gloo processes: same loss and gradients as one process with the full batch."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
# uneven split on purpose: rank 0 has 2 queries, rank 1 has 3 (all_gather_variable path)
QUERY_ROWS = [[0, 1], [2, 3, 4]]
NEGATIVES_PER_QUERY = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build():
    """A tiny TRM (same seed in every process) and a batch of 5 queries, 5 positives, 10 hard negatives."""
    from encoder.config import ModelConfig
    from encoder.heads import TextRepresentationModel
    from encoder.losses import LossConfig, build_output_losses

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         hidden_dropout=0.0, max_position_embeddings=64, attention_backend="reference")
    model = TextRepresentationModel(config).double()
    generator = torch.Generator().manual_seed(1)

    def texts(count: int) -> list[list[int]]:
        # shared token ids between queries and documents so the sparse term is non-trivial
        return [[0] + torch.randint(4, 24, (int(torch.randint(3, 9, (1,), generator=generator)),),
                                    generator=generator).tolist() + [2] for _ in range(count)]

    queries, positives, negatives = texts(5), texts(5), texts(5 * NEGATIVES_PER_QUERY)
    loss_config = LossConfig(dense_temperature=0.05, sparse_temperature=0.01, sparse_weight=0.3,
                             matryoshka_dims=[16, 32], matryoshka_weights=[0.5, 1.0])
    return model, queries, positives, negatives, build_output_losses(loss_config, config.hidden_size)


def loss_and_grads(rows: list[int], gather: bool):
    from encoder.batch import UnpaddedBatch
    from encoder.losses import global_pair_loss

    model, queries, positives, negatives, outputs = build()
    neg_rows = [r * NEGATIVES_PER_QUERY + k for r in rows for k in range(NEGATIVES_PER_QUERY)]

    def run(seqs):
        return model(UnpaddedBatch.from_sequences(seqs))

    q = run([queries[r] for r in rows])
    p = run([positives[r] for r in rows])
    n = run([negatives[r] for r in neg_rows])
    result = global_pair_loss(q, p, n, outputs, gather=gather)
    result.loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return result.loss.detach(), grads


def worker(rank: int, port: int, out_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)  # as DataLoader workers do after a fork: no inherited OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        loss, grads = loss_and_grads(QUERY_ROWS[rank], gather=True)
        names = sorted(grads)
        for name in names:  # each rank holds d(full loss)/d(own slice): the full gradient is the sum
            dist.all_reduce(grads[name], op=dist.ReduceOp.SUM)
        torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gather_matches_single_process_full_batch(tmp_path):
    # fork, not spawn: the children skip re-importing torch (seconds each on 2 cores); gloo is fork-safe here
    # because the parent never initialised a process group
    mp.start_processes(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    full_loss, full_grads = loss_and_grads([0, 1, 2, 3, 4], gather=False)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        # the heads normalise and score in float32 (as in training), so float32 tolerances; a lost cross-rank
        # term changes gradients by tens of percent
        torch.testing.assert_close(result["loss"], full_loss, rtol=1e-6, atol=1e-7)
        assert set(result["grads"]) == set(full_grads)
        for name, grad in full_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")
    # the sparse head and the embeddings really received gradient (the test would be empty otherwise)
    assert full_grads["head.sparse_linear.weight"].abs().sum() > 0
    assert full_grads["encoder.embeddings.word_embeddings.weight"].abs().sum() > 0


def test_local_only_loss_differs_from_full_batch():
    """Guard against a vacuous test: the local loss of one rank's rows is not the full-batch loss."""
    local_loss, _ = loss_and_grads(QUERY_ROWS[1], gather=False)
    full_loss, _ = loss_and_grads([0, 1, 2, 3, 4], gather=False)
    assert abs(local_loss.item() - full_loss.item()) > 1e-3
