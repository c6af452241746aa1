"""End to end on the embedded data: TRM training -> dense/sparse/hybrid eval, reranker over the dense top-k,
BM25 baseline; plus the MLM-checkpoint loading path and the revNTK export.

The TRM trains from a random init (an MLM stage would not fit the test budget); loading from an MLM
checkpoint is tested separately on a real `CheckpointManager` checkpoint. Margins are chosen so that an
untrained or broken model fails them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_prep.beir import read_beir
from data_prep.tokenizer import special_ids
from encoder.artifacts import load_final
from encoder.checkpoint import CheckpointManager
from encoder.config import ModelConfig, load_config
from encoder.evaluate import evaluate_trm, markdown_table, rerank_sample, run_evaluation
from encoder.evaluate import main as evaluate_main
from encoder.heads import MaskedLM, TextRepresentationModel
from encoder.metrics import mean_metrics
from encoder.train_contrastive import TRMRunConfig, build_trm
from encoder.train_contrastive import train as train_trm
from encoder.train_reranker import RerankerRunConfig
from encoder.train_reranker import train as train_reranker

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

pytestmark = pytest.mark.slow  # minutes on 2 CPU cores; `make test-fast` skips it

TRM_STEPS = 300
RERANKER_STEPS = 40


def _common(assets, out: Path, name: str) -> list[str]:
    data, tokenizer_dir = assets.data, assets.tokenizer_dir
    from data_prep.tokenizer import load_tokenizer

    vocab = special_ids(load_tokenizer(tokenizer_dir)).padded_vocab_size
    return [f"data.pairs={data.pairs}", f"data.tokenizer={tokenizer_dir}", f"model.vocab_size={vocab}",
            f"checkpoint.dir={out / name}"]


@pytest.fixture(scope="session")
def pipeline(tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    data = tiny_assets.data
    trm_config = load_config(TRMRunConfig, CONFIGS / "tiny_trm_ft.yaml", _common(tiny_assets, out, "trm") + [
        f"train.max_steps={TRM_STEPS}", "data.max_query_length=48", "data.max_doc_length=96",
        "data.num_hard_negatives=1", "data.grad_cache=false", "checkpoint.every=1000"])
    trm_summary = train_trm(trm_config)
    rr_config = load_config(RerankerRunConfig, CONFIGS / "tiny_reranker.yaml", _common(tiny_assets, out, "rr") + [
        f"train.max_steps={RERANKER_STEPS}", f"train.init_from={trm_summary['final']}",
        f"data.negatives_from={trm_summary['final']}", "data.max_length=128", "data.batch_size=8",
        "data.num_hard_negatives=2", "data.num_random_negatives=1", "data.grad_cache=false",
        "checkpoint.every=1000"])
    rr_summary = train_reranker(rr_config)
    trm, tokenizer, info = load_final(trm_summary["final"])
    reranker, _, _ = load_final(rr_summary["final"])
    torch.manual_seed(0)
    untrained = TextRepresentationModel(trm.config, tuple(info["special_token_ids"]))
    beir = read_beir(data.beir)
    report = run_evaluation(beir, tokenizer, trm, reranker, untrained, rerank_top_k=20,
                            dims=info["matryoshka_dims"], out_dir=out / "eval", progress=lambda _: None)
    print("\n" + markdown_table(report["results"]))  # the measured table, visible with -s
    return {"report": report, "out": out, "trm": trm_summary, "reranker": rr_summary}


def ndcg(report: dict, system: str, group: str = "all") -> float:
    return report["results"][system][group]["ndcg@10"]


def test_trained_dense_clearly_beats_untrained(pipeline):
    report = pipeline["report"]
    assert ndcg(report, "dense") > ndcg(report, "untrained dense") + 0.1
    assert ndcg(report, "dense", "script:latin") > ndcg(report, "untrained dense", "script:latin") + 0.05


def test_hybrid_above_a_single_output_on_some_group(pipeline):
    report = pipeline["report"]
    groups = [g for g in report["results"]["hybrid"] if g != "all"]
    better = [g for g in groups if ndcg(report, "hybrid", g) > min(ndcg(report, "dense", g), ndcg(report, "sparse", g))
              + 0.05]
    assert better, "hybrid is not above dense or sparse on any group"
    assert ndcg(report, "hybrid") >= ndcg(report, "dense") - 1e-9  # γ from the dev split never hurts here


def test_hybrid_clearly_beats_untrained_hybrid(pipeline):
    report = pipeline["report"]
    # the untrained sparse head already scores plain token overlap (every weight starts near 1): the trained
    # one must weigh the tokens that carry across languages (placeholders, numbers, names) above the rest
    assert ndcg(report, "hybrid") > ndcg(report, "untrained hybrid") + 0.1
    assert ndcg(report, "sparse") > ndcg(report, "untrained sparse") + 0.05


@pytest.mark.xfail(strict=False, reason="does not hold at toy scale on this set. It is cross-lingual (a query in one "
                   "of 11 languages, its English source the answer), and a 2-layer cross-encoder trained for 40-100 "
                   "steps learns no translation: its listwise loss stays near ln 6 = 1.79 (make demo: 1.64-1.85 "
                   "over 100 steps). Measured 2026-12-07 on the 2-core CPU, with match types and a corpus of "
                   "held-out distractors: this fixture, TRM init, 40 steps: hybrid top-20 nDCG@10 0.770, reranker "
                   "alone 0.657, fused 0.770 (beta 0 from dev); make demo, MLM init, 100 steps: "
                   "0.785 -> 0.545 alone, 0.785 fused. On monolingual held-out text, where shared words decide, "
                   "the same recipe helps: make demo-heldout fused 0.414 -> 0.462 (docs/small_preset.md)")
def test_reranker_improves_over_its_first_stage(pipeline):
    report = pipeline["report"]
    assert ndcg(report, "hybrid + rerank@20") > ndcg(report, "hybrid") + 0.03


def test_reranker_verdict_follows_the_measured_figures(pipeline):
    report = pipeline["report"]
    first = ndcg(report, "hybrid")
    for verdict_key, row in (("reranker_alone_verdict", "hybrid + rerank@20"),
                             ("reranker_verdict", "hybrid + rerank@20 fused")):
        reranked, verdict = ndcg(report, row), report[verdict_key]
        assert verdict["improves"] == (reranked > first + 0.005)
        assert f"{first:.3f} -> {reranked:.3f}" in verdict["text"]
    beta = report["rerank_beta"]
    assert report["rerank_beta_tuning"]["split"] == "dev" and f"β {beta:g} tuned on dev" in report["reranker_verdict"][
        "text"]
    # the fusion cannot do worse on dev than the first stage alone (β 0 is in the grid)
    curve = report["rerank_beta_tuning"]["ndcg@10_by_beta"]
    assert curve[beta] >= curve[0.0]


def test_a_reranked_sample_is_compared_with_its_own_first_stage(pipeline, tiny_assets):
    trm, tokenizer, _ = load_final(pipeline["trm"]["final"])
    reranker, _, _ = load_final(pipeline["reranker"]["final"])
    beir = read_beir(tiny_assets.data.beir)
    report = run_evaluation(beir, tokenizer, trm, reranker, rerank_top_k=20, bm25=False, rerank_queries=5,
                            progress=lambda _: None)
    row, verdict = report["results"]["hybrid + rerank@20"]["all"], report["reranker_verdict"]
    assert row["queries"] == 5 and verdict["queries"] == 5 and "5 sampled queries" in verdict["text"]
    assert report["results"]["hybrid"]["all"]["queries"] == report["queries"] > 5
    # the verdict's first stage is the hybrid over the same 5 queries, not over all of them
    qrels = beir.qrels["test"]
    hybrid = evaluate_trm(trm, tokenizer, beir)["runs"]["hybrid"]
    sample = rerank_sample(sorted(qrels), 5)
    assert verdict["first_stage_ndcg@10"] == pytest.approx(mean_metrics(hybrid, qrels, sample)["ndcg@10"], abs=1e-4)


def test_outputs_written(pipeline):
    out = pipeline["out"] / "eval"
    saved = json.loads((out / "results.json").read_text())
    assert {"dense", "sparse", "hybrid", "bm25", "hybrid + rerank@20", "untrained dense"} <= set(saved["results"])
    assert "lang:de" in saved["results"]["bm25"] and "script:latin" in saved["results"]["bm25"]
    assert saved["gamma_tuning"]["split"] == "dev"
    assert (out / "results.md").read_text().startswith("### ndcg@10")
    assert (out / "matryoshka.png").stat().st_size > 1000
    # Matryoshka: every width was scored, the full width is in the curve
    assert set(saved["matryoshka_ndcg@10"]["trained"]) == {"32", "64", "96", "128"}


def test_evaluate_cli(pipeline, tiny_assets, tmp_path, capsys):
    data = tiny_assets.data
    code = evaluate_main(["--beir", str(data.beir), "--trm", pipeline["trm"]["final"], "--no-bm25",
                          "--out", str(tmp_path)])
    assert code == 0
    assert "| hybrid |" in capsys.readouterr().out
    assert (tmp_path / "results.json").is_file()


def test_trm_loads_encoder_from_an_mlm_checkpoint_with_fresh_heads(tiny_assets, tmp_path):
    """The MLM trainer's checkpoint layout (CheckpointManager, model.pt of a MaskedLM) -> TRM encoder."""
    overrides = _common(tiny_assets, tmp_path, "trm") + ["train.revntk_factor=8"]
    config = load_config(TRMRunConfig, CONFIGS / "tiny_trm_cpt.yaml", overrides)
    torch.manual_seed(1)
    mlm = MaskedLM(ModelConfig(**{**config.model.__dict__}))
    CheckpointManager(tmp_path / "mlm").save(7, mlm, torch.optim.SGD(mlm.parameters(), lr=0.1), config=config)
    config.train.init_from = str(tmp_path / "mlm")
    from data_prep.tokenizer import load_tokenizer

    trm = build_trm(config, load_tokenizer(tiny_assets.tokenizer_dir))
    for name, value in mlm.encoder.state_dict().items():
        assert torch.equal(trm.encoder.state_dict()[name], value), name
    # revNTK: training runs at θ/8; the run config itself keeps θ (a resume must not divide twice)
    assert trm.encoder.config.rope_theta == config.model.rope_theta / 8
    assert config.model.rope_theta == 160000.0
    with pytest.raises(RuntimeError):  # a checkpoint of another shape is refused, naming the key
        config.model.hidden_size, config.model.intermediate_size = 64, 128
        build_trm(config, load_tokenizer(tiny_assets.tokenizer_dir))


def test_revntk_is_saved_for_inference(tiny_assets, tmp_path):
    overrides = _common(tiny_assets, tmp_path, "trm") + ["train.revntk_factor=8", "train.max_steps=2",
                                                              "data.batch_size=4", "data.max_doc_length=32"]
    summary = train_trm(load_config(TRMRunConfig, CONFIGS / "tiny_trm_cpt.yaml", overrides))
    final = Path(summary["final"])
    saved = load_config(ModelConfig, final / "model.yaml")
    assert (saved.rope_theta, saved.rope_ntk_factor) == (20000.0, 8.0)
    info = json.loads((final / "inference.json").read_text())
    assert info["kind"] == "trm" and info["revntk_factor"] == 8.0 and info["trained_rope_theta"] == 20000.0
    model, _, _ = load_final(final)
    assert model.encoder.rotary.theta == 20000.0 and model.encoder.rotary.ntk_factor == 8.0


def test_idf_sparse_prior_comes_from_the_training_documents_once(tiny_assets, tiny_tokenizer):
    from data_prep.pairs import read_pairs
    from encoder.heads import idf_prior
    from encoder.train_contrastive import set_sparse_prior

    records = read_pairs(tiny_assets.data.pairs)[:200]
    vocab = special_ids(tiny_tokenizer).padded_vocab_size
    config = ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = TextRepresentationModel(config, tuple(special_ids(tiny_tokenizer).all_special))
    set_sparse_prior(model, "none", records, tiny_tokenizer)
    assert torch.all(model.head.token_prior == 1)
    set_sparse_prior(model, "idf", records, tiny_tokenizer)
    texts = sorted({r.positive for r in records} | {n for r in records for n in r.negatives})
    expected = idf_prior([tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], vocab)
    assert torch.allclose(model.head.token_prior, expected)
    set_sparse_prior(model, "idf", records[:10], tiny_tokenizer)  # a prior already set (a TRM init) is kept
    assert torch.allclose(model.head.token_prior, expected)
    assert float(model.head.mean_text_length) == 0  # max-pooled weights need no length

    # BM25-scaled weights: the mean training document length too, even under a prior that came with the init
    config.sparse_tf_k1 = 1.2
    scaled = TextRepresentationModel(config, tuple(special_ids(tiny_tokenizer).all_special))
    scaled.head.token_prior.copy_(expected)
    set_sparse_prior(scaled, "idf", records, tiny_tokenizer)
    lengths = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert torch.allclose(scaled.head.token_prior, expected)
    assert abs(float(scaled.head.mean_text_length) - sum(lengths) / len(lengths)) < 1e-3


def test_trainers_read_only_the_selected_pairs(tmp_path):
    from data_prep.pairs import PairRecord, write_pairs
    from encoder.pair_batching import PairDataConfig, load_records
    from encoder.train_reranker import RerankerDataConfig

    records = [PairRecord("Options", "The options of ls.", (), "en", "en", "manpages:ft-heading"),
               PairRecord("Options", "The options of cp.", (), "en", "en", "manpages:ft-heading"),
               PairRecord("Mots", "Des mots.", (), "fr", "fr", "gnome-user-docs:ft-heading"),
               PairRecord("oui", "yes", (), "fr", "en", "django")]
    path = tmp_path / "pairs.jsonl"
    write_pairs(records, path)
    cpu = torch.device("cpu")
    assert load_records(PairDataConfig(pairs=str(path)), cpu) == records
    for config in (PairDataConfig(pairs=str(path), sources=["manpages", "gnome-user-docs"], unique_queries=True),
                   RerankerDataConfig(pairs=str(path), sources=["manpages", "gnome-user-docs"], unique_queries=True)):
        assert load_records(config, cpu) == records[2:3]
    with pytest.raises(ValueError, match=r"data.sources: no record .*pairs.jsonl is from \['udhr'\].*'django'"):
        load_records(PairDataConfig(pairs=str(path), sources=["udhr"]), cpu)
    every_query_ambiguous = r"data.unique_queries: every query of .*pairs.jsonl \(data.sources=\['manpages'\]\)"
    with pytest.raises(ValueError, match=every_query_ambiguous):
        load_records(PairDataConfig(pairs=str(path), sources=["manpages"], unique_queries=True), cpu)
    # random negatives only (the small preset's reranker): a named TRM is not loaded to mine negatives no one uses
    missing = str(tmp_path / "no-such-trm")
    random_only = RerankerDataConfig(pairs=str(path), negatives_from=missing, num_hard_negatives=0)
    assert load_records(random_only, cpu) == records
    with pytest.raises(FileNotFoundError, match="no-such-trm"):
        load_records(RerankerDataConfig(pairs=str(path), negatives_from=missing, num_hard_negatives=1), cpu)
