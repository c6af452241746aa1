"""bench/lexical_shapes.py: binary, tf-saturated and BM25 scores over token counts, by hand and end to end."""

from __future__ import annotations

import json
import math

import torch
from bench_scripts import load_bench

from data_prep.beir import BeirData, write_beir


def test_term_frequency_and_length_by_hand():
    bench = load_bench("lexical_shapes")
    special = {0, 2}
    # token 5 three times, once in a text of the same length, once in a long text
    docs = bench.count_matrix([[0, 5, 5, 5, 6, 2], [0, 5, 6, 7, 8, 2], [0, 5, *range(10, 30), 2]], 40, special)
    queries = bench.count_matrix([[0, 5, 5, 2]], 40, special)  # a query token counts once
    assert docs[0, 5] == 3 and docs[2].sum() == 21 and docs[:, 0].sum() == 0
    scores = bench.lexical_scores(queries, docs, torch.full((40,), 2.0))
    assert torch.allclose(scores["binary x prior^2"], torch.tensor([[4.0, 4.0, 4.0]]))
    idf = math.log1p(0.5 / 3.5)  # token 5 is in all three documents
    sat = [3 * 2.2 / (3 + 1.2), 1.0, 1.0]
    assert torch.allclose(scores["tf-saturated x idf"], idf * torch.tensor([sat]))
    mean_len = (4 + 4 + 21) / 3

    def bm25(tf, length):
        return tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / mean_len))

    expected = torch.tensor([[bm25(3, 4), bm25(1, 4), bm25(1, 21)]])
    assert torch.allclose(scores["BM25 x idf"], idf * expected)
    assert torch.allclose(scores["BM25 x prior^2"], 4.0 * expected)
    assert scores["BM25 x idf"].argsort(descending=True).tolist() == [[0, 1, 2]]
    # the head's learned factor on one side only: it scales that side's term of each shared token
    query_factor, doc_factor = torch.ones(1, 40), torch.ones(3, 40)
    query_factor[0, 5], doc_factor[:, 5] = 0.5, torch.tensor([1.0, 3.0, 2.0])
    one_sided = bench.lexical_scores(queries, docs, torch.full((40,), 2.0), (query_factor, doc_factor))
    assert torch.allclose(one_sided["head q-side"], 0.5 * scores["BM25 x prior^2"])
    assert torch.allclose(one_sided["head d-side"], torch.tensor([[1.0, 3.0, 2.0]]) * scores["BM25 x prior^2"])


def test_every_shape_is_scored_on_a_beir_set(tiny_trm_final, tmp_path, capsys):
    bench = load_bench("lexical_shapes")
    words = "apples pears rivers mountains engines violins tulips comets".split()
    corpus = {f"d{i}": {"text": f"{w} {w} {w} and other things" if i % 2 else f"a note on {w}"}
              for i, w in enumerate(words)}
    queries = {f"q{i}": {"text": w} for i, w in enumerate(words)}
    beir = write_beir(BeirData(corpus=corpus, queries=queries, qrels={"test": {f"q{i}": {f"d{i}": 1}
                                                                                for i in range(8)}}),
                      tmp_path / "set")
    out = tmp_path / "shapes.json"
    assert bench.main([str(tiny_trm_final), str(beir), "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert set(bench.ROWS) <= row.keys() and all(0.0 <= row[name] <= 1.0 for name in bench.ROWS)
    assert row["BM25 x idf"] > 0.5  # each query word names one document
    assert "| set |" in capsys.readouterr().out
    assert bench.main([str(tiny_trm_final), str(tmp_path / "missing"), "--out", str(out)]) == 2
