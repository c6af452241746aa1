"""bench/token_geometry.py: the embedding rows of each training-frequency band, alike or apart."""

from __future__ import annotations

import json

import torch
from bench_scripts import load_bench

from encoder.artifacts import load_final, save_final


def test_pairwise_cosine_by_hand():
    bench = load_bench("token_geometry")
    rows = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])  # cosines: 0, 1/sqrt2, 1/sqrt2
    assert abs(bench.mean_pairwise_cosine(rows) - (2 / 2 ** 0.5) / 3) < 1e-9


def test_rare_rows_pointing_alike_show_in_their_band_only(tiny_trm_final, tmp_path, capsys):
    bench = load_bench("token_geometry")
    out = tmp_path / "geometry.json"
    assert bench.main([str(tiny_trm_final), "--band", "20", "--out", str(out)]) == 2  # no prior yet
    assert "no idf prior" in capsys.readouterr().err

    model, _, info = load_final(tiny_trm_final)
    vocab = model.config.vocab_size
    with torch.no_grad():
        model.head.token_prior.copy_(torch.linspace(0.5, 2.0, vocab))  # id order = frequency order
        table = model.encoder.embeddings.word_embeddings.weight
        torch.manual_seed(1)
        common = torch.randn(table.shape[1])
        table[-20:] = common + 0.01 * torch.randn(20, table.shape[1])  # the rarest rows: one direction
    final = save_final(tmp_path / "degenerate", model, model.config, tiny_trm_final / "tokenizer", info)

    assert bench.main([str(final), "--band", "20", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["trained_rarest"] > 0.99
    assert abs(row["trained_frequent"]) < 0.2 and abs(row["trained_middle"]) < 0.2
    assert all(abs(row[f"random_init_{b}"]) < 0.2 for b in bench.BANDS)
    assert "| " + str(final) in capsys.readouterr().out
