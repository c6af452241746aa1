"""build_corpus end to end on small packages made here (fake apt), and one slow test on a real package."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from doc_fixtures import (
    DE,
    EN,
    HEADINGS,
    build_deb,
    fake_downloader,
    handbook_page,
    lohelp_page,
    mallard_page,
    man_page,
)

from data_prep.beir import read_beir
from data_prep.builder import CorpusConfig, build_corpus
from data_prep.clean import leak_key
from data_prep.files import DataError, read_jsonl
from data_prep.heldout import HeldoutRules, needle_token_offsets
from data_prep.pairs import read_pairs
from data_prep.weakpairs import PairLimits

HELD = [0, 1, 2, 3]  # paragraphs of the held-out handbook; the training sources use 4..7 (and one leak)


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("debs")
    hb = {f"usr/share/doc/debian-handbook/html/{d}/{page}.html": handbook_page(lang, idx, page)
          for lang, d in (("en", "en-US"), ("de", "de-DE"))
          for page, idx in (("alpha", [0, 1]), ("beta", [2, 3]))}
    gnome = {f"usr/share/help/{d}/gnome-help/page{i}.page": mallard_page(lang, i, f"page{i}")
             for lang, d in (("en", "C"), ("de", "de")) for i in (4, 5, 6)}
    # a training page quoting the held-out handbook (paragraph 3 and heading 3) must lose that text
    gnome |= {f"usr/share/help/{d}/gnome-help/leak.page": mallard_page(lang, 3, "leak")
              for lang, d in (("en", "C"), ("de", "de"))}
    # an untranslated paragraph in a German page
    gnome["usr/share/help/de/gnome-help/mixed.page"] = mallard_page("de", 6, "mixed").replace(DE[6], EN[6])
    packages = {
        "debian-handbook": build_deb("debian-handbook", hb, out, "11.2", "GPL-2.0+ or CC-BY-SA-3.0"),
        "gnome-user-docs": build_deb("gnome-user-docs", gnome, out, "43.0-2"),
        "libreoffice-help-en-us": build_deb("libreoffice-help-en-us", {
            f"usr/share/libreoffice/help/en-US/text/p{i}.html": lohelp_page("en", i) for i in (4, 5)}, out,
            licence="MPL-2.0"),
        "libreoffice-help-de": build_deb("libreoffice-help-de", {
            f"usr/share/libreoffice/help/de/text/p{i}.html": lohelp_page("de", i) for i in (4, 5)}, out,
            licence="MPL-2.0"),
        "manpages": build_deb("manpages", {"usr/share/man/man1/tool.1.gz": man_page("en", 4, "tool")}, out),
        "manpages-de": build_deb("manpages-de", {"usr/share/man/de/man1/tool.1.gz": man_page("de", 4, "tool")}, out),
    }
    return packages


def _config(**changes) -> CorpusConfig:
    base = CorpusConfig(sources=("gnome-user-docs", "libreoffice-help", "manpages", "debian-handbook"),
                        heldout=("debian-handbook",), languages=("en", "de"), max_pages={}, indomain_fraction=0.0,
                        min_long_chars=200, pair_limits=PairLimits(min_section_chars=40),
                        heldout_rules=HeldoutRules(min_section_chars=40, dev_fraction=0.34, needles_per_doc=2))
    return replace(base, **changes)


def _training_texts(root: Path) -> list[str]:
    texts = []
    for sub in ("mlm", "pairs", "long"):
        for path in sorted((root / sub).glob("*.jsonl")):
            for _, row in read_jsonl(path):
                texts += [row.get(k) for k in ("text", "query", "positive") if row.get(k)] + row.get("negatives", [])
    return texts


def test_corpus_from_packages_keeps_heldout_text_out_of_training(tmp_path, debs):
    calls: list[str] = []
    result = build_corpus(tmp_path / "corpus", _config(), cache_dir=tmp_path / "cache",
                          download=fake_downloader(debs, calls), progress=False)
    root, m = result.root, result.manifest
    assert sorted(calls) == sorted(debs)
    # no held-out paragraph, heading or title, exact or normalised, in any training line
    training = [leak_key(line) for text in _training_texts(root) for line in text.split("\n")]
    heldout = [leak_key(t) for lang in ("en", "de") for i in HELD for t in ({"en": EN, "de": DE}[lang][i],
                                                                          HEADINGS[lang][i])]
    assert training and not set(training) & set(heldout)
    assert not any(h in line for h in heldout if len(h) > 30 for line in training)
    assert m["leakage_check"]["leaks"] == 0 and m["leakage_check"]["lines"] > 20
    counts = m["paragraphs"]["gnome-user-docs"]
    assert counts["en"]["heldout_text"] >= 1 and counts["de"]["heldout_text"] >= 1  # the leak page
    assert counts["de"]["language_mismatch"] >= 1  # the English paragraph in the German page
    assert counts["en"]["duplicate"] >= 1  # paragraph 5 is on two pages
    # MLM: the training prose, each paragraph once per language
    mlm_lines = [line for _, row in read_jsonl(root / "mlm" / "en.jsonl") for line in row["text"].split("\n")]
    assert EN[5] in mlm_lines and mlm_lines.count(EN[5]) == 1 and EN[6] in mlm_lines
    assert sorted(result.mlm_files) == ["de", "en"]
    # pairs
    cpt, ft = read_pairs(result.cpt_pairs), read_pairs(result.pairs)
    assert {r.source.split(":")[1] for r in cpt} >= {"heading", "title", "xling"}
    assert any(r.source == "gnome-user-docs:xheading" and r.query_lang == "de" for r in ft)
    assert m["pairs"]["cpt"] and m["pairs"]["train"]
    # held-out sets
    heldout = {name: read_beir(path) for name, path in result.heldout.items()}
    assert set(heldout) == {f"debian-handbook/{n}" for n in ("mono-en", "mono-de", "cross-de", "longdoc")}
    mono = heldout["debian-handbook/mono-de"]
    assert {q["text"] for q in mono.queries.values()} <= set(HEADINGS["de"])
    assert set(mono.qrels) == {"test", "dev"}
    needles = [row for _, row in read_jsonl(root / "heldout/debian-handbook/longdoc/needles.jsonl")]
    longdoc = heldout["debian-handbook/longdoc"]
    for needle in needles:
        text = longdoc.corpus[needle["doc_id"]]["text"]
        assert text[needle["char_start"]:needle["char_end"]] in {DE[i] for i in HELD} | {EN[i] for i in HELD}
    # manifest: every package with version, licence, sha256
    packages = m["sources"]["debian-handbook"]["packages"]["debian-handbook"]
    assert packages["version"] == "11.2" and packages["licence"] == "GPL-2.0+ or CC-BY-SA-3.0"
    assert len(packages["sha256"]) == 64 and m["sources"]["debian-handbook"]["role"] == "heldout"
    assert m["sources"]["libreoffice-help"]["packages"]["libreoffice-help-de"]["licence"] == "MPL-2.0"
    assert m["build_seconds"] > 0


def test_second_build_uses_the_cache_and_indomain_pages_stay_out(tmp_path, debs):
    cache = tmp_path / "cache"
    build_corpus(tmp_path / "first", _config(), cache_dir=cache, download=fake_downloader(debs), progress=False)
    calls: list[str] = []
    config = _config(sources=("gnome-user-docs", "debian-handbook"), indomain_fraction=0.2)
    result = build_corpus(tmp_path / "second", config, cache_dir=cache, download=fake_downloader({}, calls),
                          progress=False)
    assert calls == []  # offline: everything came from the cache
    beir = read_beir(result.beir)
    assert result.manifest["beir"]["label"] == "in-domain" and beir.queries
    eval_texts = {leak_key(d["text"]) for d in beir.corpus.values()}
    training = {leak_key(line) for text in _training_texts(result.root) for line in text.split("\n")}
    assert eval_texts and not eval_texts & training


def test_failed_download_or_corrupt_package_leaves_the_previous_corpus(tmp_path, debs):
    out = tmp_path / "corpus"
    build_corpus(out, _config(sources=("gnome-user-docs", "debian-handbook")), cache_dir=tmp_path / "cache",
                 download=fake_downloader(debs), progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(DataError, match="libreoffice-help-de: apt-get download failed"):
        build_corpus(out, _config(), cache_dir=tmp_path / "cache2", force=True,
                     download=fake_downloader({k: v for k, v in debs.items() if k != "libreoffice-help-de"}),
                     progress=False)
    corrupt = tmp_path / "bad.deb"
    corrupt.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="manpages-de: .*not a valid Debian package"):
        build_corpus(out, _config(), cache_dir=tmp_path / "cache3", force=True,
                     download=fake_downloader({**debs, "manpages-de": corrupt}), progress=False)
    assert (out / "manifest.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".corpus")]  # no temporary directory left


def test_bad_settings_are_refused_before_any_download(tmp_path):
    calls: list[str] = []
    for config, message in ((_config(languages=("en", "xx")), "unknown language code"),
                            (_config(sources=("nosuch",)), "unknown source"),
                            (_config(heldout=("manpages-x",)), "must also be listed in sources"),
                            (_config(sources=("debian-handbook",)), "nothing is left to train on")):
        with pytest.raises(DataError, match=message):
            build_corpus(tmp_path / "c", config, cache_dir=tmp_path, download=fake_downloader({}, calls))
    assert calls == [] and not (tmp_path / "c").exists()


def test_a_language_without_pages_is_an_error(tmp_path, debs):
    empty = build_deb("gnome-user-docs", {"usr/share/help/C/gnome-help/empty.page":
                                          '<page xmlns="http://projectmallard.org/1.0/"><title>E</title></page>',
                                          "usr/share/help/de/gnome-help/empty.page":
                                          '<page xmlns="http://projectmallard.org/1.0/"><title>E</title></page>'},
                      tmp_path, "1")
    with pytest.raises(DataError, match="gnome-user-docs: no page with text for language 'de'"):
        build_corpus(tmp_path / "c", _config(sources=("gnome-user-docs", "debian-handbook")),
                     cache_dir=tmp_path / "cache", download=fake_downloader({**debs, "gnome-user-docs": empty}),
                     progress=False)


def test_needle_token_offsets_use_the_tokenizer(tmp_path, debs, tokenizer_dir):
    from data_prep.tokenizer import load_tokenizer

    result = build_corpus(tmp_path / "c", _config(sources=("gnome-user-docs", "debian-handbook")),
                          cache_dir=tmp_path / "cache", download=fake_downloader(debs), progress=False)
    directory = result.heldout["debian-handbook/longdoc"]
    offsets = needle_token_offsets(directory, load_tokenizer(tokenizer_dir))
    needles = {row["query_id"]: row for _, row in read_jsonl(directory / "needles.jsonl")}
    assert set(offsets) == set(needles)
    for qid, offset in offsets.items():
        assert offset >= 1 and (offset > 1) == (needles[qid]["char_start"] > 0)


@pytest.mark.slow
def test_real_package_download_to_corpus(tmp_path):
    """Downloads gnome-user-docs (8.5 MB) and debian-handbook (35 MB) with apt and builds en/de from them."""
    if shutil.which("apt-get") is None:
        pytest.fail("apt-get is part of this project's machine image")
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=600)
    config = CorpusConfig(sources=("gnome-user-docs", "debian-handbook"), heldout=("debian-handbook",),
                          languages=("en", "de"), max_pages={"gnome-user-docs": 60, "debian-handbook": 30})
    result = build_corpus(tmp_path / "corpus", config, cache_dir=tmp_path / "cache", progress=False)
    m = result.manifest
    assert m["sources"]["gnome-user-docs"]["packages"]["gnome-user-docs"]["licence"] == "CC-BY-SA-3.0"
    assert m["leakage_check"]["leaks"] == 0 and m["mlm"]["de"]["chars"] > 50_000
    assert read_beir(result.heldout["debian-handbook/cross-de"]).queries
    again = build_corpus(tmp_path / "again", config, cache_dir=tmp_path / "cache", progress=False,
                         download=fake_downloader({}))  # the cache alone suffices
    assert again.manifest["mlm"] == m["mlm"]
    print(json.dumps({"mlm": m["mlm"], "pairs": m["pairs"], "build_seconds": m["build_seconds"]}))
