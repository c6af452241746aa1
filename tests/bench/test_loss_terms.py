"""bench/loss_terms.py: each contrastive loss term and its gradient on the trainer's own first batches."""

from __future__ import annotations

import json
import math

from bench_scripts import load_bench

from data_prep.pairs import read_pairs
from encoder.pair_batching import GroupedRecords


def test_terms_follow_the_trainers_batches_and_only_the_sparse_term_feels_its_temperature(
        tiny_assets, tiny_trm_final, tmp_path):
    bench = load_bench("loss_terms")
    final = tiny_trm_final
    common = ["--config", "configs/tiny_trm_ft.yaml", "--batches", "2", f"data.pairs={tiny_assets.data.pairs}",
              "data.batch_size=8", "loss.matryoshka_step=16"]
    runs = {}
    for tau in ("0.05", "1.0"):
        out = tmp_path / f"probe-{tau}.json"
        assert bench.main([str(final), *common, f"loss.sparse_temperature={tau}", "--out", str(out)]) == 0
        runs[tau] = json.loads(out.read_text())["probes"][0]["rows"]
    sampler = GroupedRecords(read_pairs(tiny_assets.data.pairs), "source", 0.5, 8, seed=0)
    for step, (sharp, soft) in enumerate(zip(runs["0.05"], runs["1.0"])):
        assert sharp["source"] == sampler.names[sampler.group_at(step)]
        assert 0 < sharp["chance"] <= math.log(8)
        assert set(sharp["terms"]) == {"dense@16", "dense@32", "sparse"}
        for name in ("dense@16", "dense@32"):  # same batch, same weights: the dense terms do not change
            assert soft["terms"][name]["loss"] == sharp["terms"][name]["loss"]
            assert soft["terms"][name]["grad_norm"] > 0
        assert soft["terms"]["sparse"]["loss"] != sharp["terms"]["sparse"]["loss"]
        assert soft["terms"]["sparse"]["temperature"] == 1.0
