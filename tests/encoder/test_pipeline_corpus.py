"""The pipeline on a documentation corpus (data.corpus): the data stage records the held-out-domain sets and
the weak pairs, and the report shows every held-out set beside BM25 and a random ranking. Packages are made
here (fake apt), so nothing is downloaded."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_prep"))
from doc_fixtures import build_deb, fake_downloader, handbook_page, mallard_page  # noqa: E402

from data_prep.beir import read_beir  # noqa: E402
from data_prep.builder import CorpusConfig, build_corpus  # noqa: E402
from data_prep.files import DataError, read_jsonl, write_json  # noqa: E402
from data_prep.heldout import HeldoutRules  # noqa: E402
from data_prep.longdoc import heldout_longdoc_set  # noqa: E402
from data_prep.pairs import read_pairs  # noqa: E402
from data_prep.tokenizer import special_ids  # noqa: E402
from data_prep.weakpairs import PairLimits  # noqa: E402
from encoder import pipeline as pipeline_module  # noqa: E402
from encoder.config import ModelConfig, load_config  # noqa: E402
from encoder.evaluate import run_evaluation  # noqa: E402
from encoder.heads import TextRepresentationModel  # noqa: E402
from encoder.metrics import random_metrics  # noqa: E402
from encoder.mlm_eval import unseen_texts  # noqa: E402
from encoder.pipeline import Pipeline, PipelineConfig  # noqa: E402
from encoder.report import heldout_section  # noqa: E402


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("debs")
    pages = (("alpha", [0, 1]), ("beta", [2, 3]))
    handbook = {f"usr/share/doc/debian-handbook/html/{d}/{page}.html": handbook_page(lang, idx, page)
                for lang, d in (("en", "en-US"), ("de", "de-DE")) for page, idx in pages}
    gnome = {f"usr/share/help/{d}/gnome-help/page{i}.page": mallard_page(lang, i, f"page{i}")
             for lang, d in (("en", "C"), ("de", "de")) for i in (4, 5, 6, 7)}
    return {"debian-handbook": build_deb("debian-handbook", handbook, out, "11.2", "GPL-2.0+ or CC-BY-SA-3.0"),
            "gnome-user-docs": build_deb("gnome-user-docs", gnome, out, "43.0-2")}


@pytest.fixture
def corpus_pipeline(tmp_path, debs, monkeypatch) -> Pipeline:
    fixture = CorpusConfig(sources=("gnome-user-docs", "debian-handbook"), heldout=("debian-handbook",),
                           languages=("en", "de"), max_pages={}, indomain_fraction=0.25, min_long_chars=200,
                           pair_limits=PairLimits(min_section_chars=40),
                           heldout_rules=HeldoutRules(min_section_chars=40, dev_fraction=0.34, needles_per_doc=2))
    requested = []

    def build(out_dir, preset, cache_dir):  # the preset named in the config, built from the fixture packages
        requested.append(preset)
        return build_corpus(out_dir, fixture, cache_dir=cache_dir, download=fake_downloader(debs), progress=False)

    monkeypatch.setattr(pipeline_module, "build_corpus", build)
    config = load_config(PipelineConfig, None, [f"workdir={tmp_path / 'run'}", "data.corpus=demo-heldout",
                                                f"data.cache_dir={tmp_path / 'cache'}"])
    pipe = Pipeline(config, log=lambda _: None)
    pipe.requested = requested
    return pipe


def test_corpus_data_stage_records_heldout_sets_and_weak_pairs(corpus_pipeline):
    data = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    assert corpus_pipeline.requested == ["demo-heldout"]
    assert data["source"] == "corpus demo-heldout" and set(data["mlm"]) == {"en", "de"}
    # every held-out BEIR set but the long-document one (that is a needle set, scored by the longdoc stage)
    assert {"debian-handbook/mono-en", "debian-handbook/mono-de", "debian-handbook/cross-de"} <= set(data["heldout"])
    assert not [name for name in data["heldout"] if name.endswith("longdoc")]
    assert Path(data["cpt_pairs"]).is_file() and data["units"] == ""  # no embedded source: no needle units
    for path in data["heldout"].values():
        assert read_beir(path, splits=("test",), required=("test",)).qrels["test"]


def test_corpus_and_user_data_are_exclusive():
    with pytest.raises(ValueError, match="data.corpus"):
        load_config(PipelineConfig, None, ["data.corpus=demo-heldout", "data.path=/some/dir"])
    with pytest.raises(ValueError, match="data.corpus: expected one of"):
        load_config(PipelineConfig, None, ["data.corpus=nope"])


def test_heldout_report_section_shows_every_set_beside_bm25_and_random(corpus_pipeline, tiny_assets, tiny_tokenizer,
                                                                      tmp_path):
    data_outputs = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    torch.manual_seed(0)
    vocab = special_ids(tiny_tokenizer).padded_vocab_size
    config = replace(ModelConfig(), vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2,
                     intermediate_size=64)
    trm = TextRepresentationModel(config, tuple(special_ids(tiny_tokenizer).all_special)).eval()
    paths = {}
    for name, path in sorted(data_outputs["heldout"].items()):
        out = tmp_path / name.replace("/", "__")
        data = read_beir(path)
        report = run_evaluation(data, tiny_tokenizer, trm, split="test", out_dir=out, progress=lambda _: None)
        assert report["results"]["random"]["all"]["ndcg@10"] == pytest.approx(
            random_metrics(data.qrels["test"], len(data.corpus))["ndcg@10"])
        paths[name] = str(out / "results.json")
    section = heldout_section(paths)
    rows = [line for line in section.splitlines() if line.startswith("| debian-handbook/")]
    assert len(rows) == len(paths)
    header = next(line for line in section.splitlines() if line.startswith("| set |"))
    assert all(col in header for col in ("random", "bm25", "dense", "sparse", "hybrid", "γ"))
    saved = json.loads(Path(paths["debian-handbook/mono-en"]).read_text())
    assert f"| {saved['results']['bm25']['all']['ndcg@10']:.3f} |" in rows[[r.split(" |")[0] for r in rows].index(
        "| debian-handbook/mono-en")]


def _stub_evaluate_stage(corpus_pipeline, monkeypatch) -> tuple[list, dict]:
    """The evaluate stage's models and scoring stubbed (their maths is tested on its own): returns the data sets
    run_evaluation was called on and the texts each MLM stage was scored on."""
    evaluated, scored = [], {}

    def fake_run_evaluation(data, *args, out_dir=None, **kwargs):
        evaluated.append(data)
        return {"gamma": 0.5}

    def fake_accuracy(model, tokenizer, texts):
        scored.setdefault(model, []).append(list(texts))
        return {"accuracy": 0.5, "loss": 1.0, "masked": 1, "texts": len(texts)}

    class FakeTRM:
        config = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)

    monkeypatch.setattr(pipeline_module, "load_final", lambda path: (FakeTRM(), None, {"special_token_ids": [0]}))
    monkeypatch.setattr(pipeline_module, "run_evaluation", fake_run_evaluation)
    monkeypatch.setattr(pipeline_module, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(pipeline_module, "load_mlm", lambda run_dir: run_dir)
    monkeypatch.setattr(pipeline_module, "mlm_accuracy", fake_accuracy)
    for stage in ("tokenizer", "trm_ft", "reranker", "mlm_stage1", "mlm_stage2"):
        corpus_pipeline.records[stage] = {"outputs": {"dir": "tok", "final": "final", "run_dir": stage}}
    return evaluated, scored


def test_evaluate_scores_every_heldout_set_and_mlm_accuracy_on_the_in_domain_units(corpus_pipeline, tmp_path,
                                                                                  monkeypatch):
    """Each held-out set is evaluated once, and the MLM's "in-domain" text is the in-domain eval's, not the
    last held-out set's."""
    data_outputs = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    evaluated, scored = _stub_evaluate_stage(corpus_pipeline, monkeypatch)
    (tmp_path / "evaluate").mkdir()  # the pipeline makes a stage's directory before running it
    outputs = corpus_pipeline.stage_evaluate(tmp_path / "evaluate")
    indomain = read_beir(data_outputs["beir"], splits=("test", "dev"), required=("test",))
    assert len(evaluated) == 1 + len(data_outputs["heldout"]) and evaluated[0].corpus == indomain.corpus
    assert set(outputs["heldout"]) == set(data_outputs["heldout"])
    for stage in ("mlm_stage1", "mlm_stage2"):
        assert scored[stage][0] == unseen_texts(indomain)  # the first text set scored is the in-domain one
    saved = json.loads(Path(outputs["mlm_accuracy"]).read_text())
    assert list(saved)[0] == "in-domain" and all("/mono-" in name for name in list(saved)[1:])


def test_an_interrupted_evaluate_stage_keeps_the_sets_it_finished(corpus_pipeline, tmp_path, monkeypatch):
    """A restart with the same stage key keeps the stage directory; the in-domain evaluation and a held-out set
    whose results.json was written are not run again (their γ is the saved one), every other set is."""
    data_outputs = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    evaluated, _ = _stub_evaluate_stage(corpus_pipeline, monkeypatch)
    directory = tmp_path / "evaluate"
    done = sorted(data_outputs["heldout"])[0]
    (directory / "heldout" / done.replace("/", "__")).mkdir(parents=True)
    write_json(directory / "results.json", {"gamma": 0.25})
    write_json(directory / "heldout" / done.replace("/", "__") / "results.json", {"gamma": 0.5})
    outputs = corpus_pipeline.stage_evaluate(directory)
    indomain = read_beir(data_outputs["beir"], splits=("test", "dev"), required=("test",))
    assert len(evaluated) == len(data_outputs["heldout"]) - 1
    assert all(data.corpus != indomain.corpus for data in evaluated)
    assert outputs["gamma"] == 0.25 and set(outputs["heldout"]) == set(data_outputs["heldout"])


def _tiny_trm(tokenizer, pooling: str = "cls") -> TextRepresentationModel:
    torch.manual_seed(0)
    config = replace(ModelConfig(), vocab_size=special_ids(tokenizer).padded_vocab_size, hidden_size=32,
                     num_layers=1, num_heads=2, intermediate_size=64, pooling=pooling)
    return TextRepresentationModel(config, tuple(special_ids(tokenizer).all_special)).eval()


def test_longdoc_stage_scores_the_heldout_long_pages(corpus_pipeline, tiny_tokenizer, tmp_path):
    """The held-out domain's whole pages are scored whole / truncated / chunked, each needle placed where its
    section really starts in the page's tokens."""
    data = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    assert list(data["heldout_longdoc"]) == ["debian-handbook/longdoc"]
    path = data["heldout_longdoc"]["debian-handbook/longdoc"]
    longdoc = heldout_longdoc_set(path, tiny_tokenizer)
    test_queries = read_beir(path, splits=("test",)).qrels["test"]
    assert set(longdoc.needles) == set(test_queries) and set(longdoc.beir.qrels["test"]) == set(test_queries)
    spans = {row["query_id"]: row for _, row in read_jsonl(Path(path) / "needles.jsonl")}
    for qid, needle in longdoc.needles.items():
        text = longdoc.beir.corpus[needle.doc_id]["text"]
        offsets = tiny_tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        assert needle.doc_tokens == len(offsets) and needle.length_bucket >= min(len(offsets), 32768)
        # the needle's first token is the first one that reaches into the section
        assert offsets[needle.token_offset][1] > spans[qid]["char_start"]
        assert all(end <= spans[qid]["char_start"] or end == start
                   for start, end in offsets[1:needle.token_offset])
        assert needle.position in (0.0, 0.25, 0.5, 0.75, 1.0)
    corpus_pipeline.records["evaluate"] = {"outputs": {"gamma": 0.5}}
    out = corpus_pipeline._heldout_longdoc(tmp_path / "heldout", _tiny_trm(tiny_tokenizer), tiny_tokenizer, 0.5)
    held = out["debian-handbook/longdoc"]
    rows = json.loads(Path(held["json"]).read_text())["rows"]
    assert {"whole dense", "trunc512 dense", "chunk512 dense", "bm25"} <= {r["system"] for r in rows}
    assert held["queries"] == len(test_queries) and Path(held["heatmap_png"]).is_file()


def test_heldout_longdoc_needle_outside_the_corpus_names_the_line(corpus_pipeline, tiny_tokenizer):
    path = Path(corpus_pipeline.run(only=("data",))["data"]["outputs"]["heldout_longdoc"]["debian-handbook/longdoc"])
    lines = (path / "needles.jsonl").read_text().splitlines()
    test_queries = read_beir(path, splits=("test",)).qrels["test"]
    bad = next(i for i, line in enumerate(lines) if json.loads(line)["query_id"] in test_queries)
    row = json.loads(lines[bad])
    lines[bad] = json.dumps({**row, "doc_id": "nowhere"})
    (path / "needles.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"needles.jsonl:{bad + 1}: document 'nowhere'"):
        heldout_longdoc_set(path, tiny_tokenizer)


def test_longdoc_stage_scores_the_sparse_side_with_the_configured_statistics(corpus_pipeline, tiny_tokenizer,
                                                                             tmp_path, monkeypatch):
    import encoder.longdoc_eval as longdoc_eval

    corpus_pipeline.run(only=("data",))
    seen = []
    real = longdoc_eval.encode_set
    monkeypatch.setattr(longdoc_eval, "encode_set", lambda *a, **kw: seen.append(kw.get("sparse_statistics")) or
                        real(*a, **kw))
    monkeypatch.setattr(corpus_pipeline.config, "sparse_statistics", "collection")
    corpus_pipeline._heldout_longdoc(tmp_path / "heldout", _tiny_trm(tiny_tokenizer), tiny_tokenizer, 0.5)
    assert seen == ["collection"] * 3  # whole, first 512 tokens, 512-token chunks


@pytest.mark.parametrize("mode", ["all", "mono", "none"])
def test_heldout_rerank_chooses_the_sets_the_reranker_reorders(corpus_pipeline, tmp_path, monkeypatch, mode):
    data_outputs = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    rerankers, passed = {}, {}

    def fake_run_evaluation(data, tokenizer, trm, reranker=None, *args, out_dir=None, **kwargs):
        rerankers[str(out_dir)] = reranker
        passed[Path(out_dir).name] = kwargs.get("sparse_statistics"), kwargs.get("doc_cache")
        return {"gamma": 0.5}

    class Final(str):
        config = None

    monkeypatch.setattr(pipeline_module, "load_final", lambda path: (Final(path), None, {"special_token_ids": [0]}))
    monkeypatch.setattr(pipeline_module, "TextRepresentationModel", lambda *a: torch.nn.Identity())
    monkeypatch.setattr(pipeline_module, "run_evaluation", fake_run_evaluation)
    monkeypatch.setattr(pipeline_module.Pipeline, "_mlm_accuracy", lambda self, *a: "mlm.json")
    for stage in ("tokenizer", "trm_ft", "reranker"):
        corpus_pipeline.records[stage] = {"outputs": {"dir": "tok", "final": f"{stage}-final"}}
    corpus_pipeline.config.heldout_rerank = mode
    corpus_pipeline.config.sparse_statistics = "collection"
    (tmp_path / "evaluate").mkdir()
    corpus_pipeline.stage_evaluate(tmp_path / "evaluate")
    # every set is scored with the configured statistics; the held-out sets share one corpus-encoding cache
    assert {statistics for statistics, _ in passed.values()} == {"collection"}
    caches = [cache for name, (_, cache) in passed.items() if name != "evaluate"]
    assert len(caches) >= 2 and all(cache is caches[0] for cache in caches) and isinstance(caches[0], dict)
    reranked = {Path(d).name for d, r in rerankers.items() if r == "reranker-final"}
    names = {n.replace("/", "__") for n in data_outputs["heldout"]}
    expected = {"all": names, "mono": {n for n in names if "__mono-" in n}, "none": set()}[mode]
    assert reranked == expected | {"evaluate"}  # the in-domain set is always reranked


def test_pipeline_settings_are_checked_before_any_stage(tmp_path):
    for bad, match in ((["heldout_rerank=some"], "heldout_rerank: expected all, mono or none"),
                       (["reranker_init=bert"], "reranker_init: expected mlm or trm"),
                       (["sparse_statistics=corpus"], "sparse_statistics: expected model or collection"),
                       (["rerank_queries=-1"], "rerank_queries: must be >= 0"),
                       (["rerank_max_length=-2"], "rerank_max_length: must be >= 0"),
                       (["model_overrides=[train.max_steps=3]"], "model_overrides: 'train.max_steps=3' is not"),
                       (["model_overrides=[model.pooling=max]"], "model.pooling: expected cls or mean")):
        with pytest.raises(ValueError, match=match):
            Pipeline(load_config(PipelineConfig, None, [f"workdir={tmp_path}", *bad]))


def test_model_overrides_reach_every_training_stage_and_its_fingerprint(tmp_path):
    base = load_config(PipelineConfig, None, [f"workdir={tmp_path}"])
    sized = load_config(PipelineConfig, None, [f"workdir={tmp_path}", "model_overrides=[model.hidden_size=96]"])
    keys = {}
    for config in (base, sized):
        pipe = Pipeline(config, log=lambda _: None)
        keys[id(config)] = {name: pipe._stage(name).key for name in pipeline_module.STAGES}
        pipe.records["tokenizer"] = {"outputs": {"padded_vocab_size": 128}}
        assert pipe._model_overrides()[-1] == "model.vocab_size=128"  # the tokenizer's size always wins
        pipe.keys.clear()
    assert keys[id(base)]["tokenizer"] == keys[id(sized)]["tokenizer"]
    assert keys[id(base)]["mlm_stage1"] != keys[id(sized)]["mlm_stage1"]
    pipe = Pipeline(sized, log=lambda _: None)
    pipe.records["tokenizer"] = {"outputs": {"padded_vocab_size": 128}}
    assert pipe._model_overrides() == ["model.hidden_size=96", "model.vocab_size=128"]


def test_corpus_long_pairs_join_the_fine_tuning_long_pairs(corpus_pipeline, tiny_assets, tmp_path):
    data = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    corpus_pairs = read_pairs(data["long_pairs"])
    assert corpus_pairs and all(p.source.endswith(":long") for p in corpus_pairs)
    corpus_pipeline.records["tokenizer"] = {"outputs": {"dir": str(tiny_assets.tokenizer_dir)}}
    written = read_pairs(corpus_pipeline._long_pairs(tmp_path))
    assert written == corpus_pairs  # no embedded units in this corpus: its own long pairs only
    corpus_pipeline.config.long_pair_lengths = []
    assert corpus_pipeline._long_pairs(tmp_path / "off") == ""  # [] switches long pairs off


def test_reranker_pairs_add_the_weak_pairs_and_change_the_stage_key(corpus_pipeline, tmp_path):
    data = corpus_pipeline.run(only=("data",))["data"]["outputs"]
    assert corpus_pipeline._reranker_pair_file(tmp_path / "ft") == data["pairs"]  # the default: untouched
    key_ft = corpus_pipeline._stage("reranker").key
    corpus_pipeline.config.reranker_pairs = ["ft", "cpt"]
    assert corpus_pipeline._stage("reranker").key != key_ft  # a different training set re-runs the stage
    (tmp_path / "both").mkdir()
    both = read_pairs(corpus_pipeline._reranker_pair_file(tmp_path / "both"))
    assert both == read_pairs(data["pairs"]) + read_pairs(data["cpt_pairs"])
    with pytest.raises(ValueError, match="reranker_pairs: expected a non-empty list of ft and cpt"):
        Pipeline(load_config(PipelineConfig, None, [f"workdir={tmp_path}", "reranker_pairs=[ft, weak]"]))
