"""bench/pair_fit.py: does a model rank its own pairs' positives first, source by source."""

from __future__ import annotations

import json

import torch
from bench_scripts import load_bench

from data_prep.pairs import PairRecord, write_pairs


def test_rank_counts_only_competing_columns_and_ties_against_the_positive():
    bench = load_bench("pair_fit")
    scores = torch.tensor([[0.9, 0.5, 0.95], [0.1, 0.2, 0.2], [0.0, 0.0, 1.0]])
    competing = torch.ones(3, 3, dtype=torch.bool)
    competing[0, 2] = False  # a translation of query 0's positive
    assert bench.ranks(scores, competing).tolist() == [1, 2, 1]


def test_a_model_fits_identity_pairs_and_not_shuffled_ones(tiny_trm_final, tmp_path):
    bench = load_bench("pair_fit")
    final = tiny_trm_final
    texts = [f"document number {i} about {word}" for i, word in enumerate(
        "apples pears rivers mountains engines violins tulips comets glaciers lanterns".split())]
    same = [PairRecord(t, t, (), "en", "en", "same") for t in texts]
    # each query paired with the next text (distinct strings on each side, so the pairs link no two positives)
    shifted = [PairRecord(f"q {t}", f"d {texts[(i + 1) % len(texts)]}", (), "en", "en", "shifted")
               for i, t in enumerate(texts)]
    # a record whose positive repeats another's is left out of a group (groups hold distinct positives)
    pairs = tmp_path / "pairs.jsonl"
    write_pairs([*same, *shifted, PairRecord("x y z", texts[0], (), "en", "en", "same")], pairs)
    out = tmp_path / "fit.json"
    assert bench.main([str(final), str(pairs), "--groups", "2", "--group-size", "5", "--out", str(out)]) == 0
    rows = {r["source"]: r for r in json.loads(out.read_text())["fits"][0]["rows"]}
    assert rows["same"]["queries"] == 10 and rows["same"]["random_top1"] == 0.2
    assert rows["same"]["dense_top1"] == 1.0 and rows["same"]["dense_rank"] == 1.0  # identical text: cosine 1
    assert rows["shifted"]["dense_top1"] < 0.5
