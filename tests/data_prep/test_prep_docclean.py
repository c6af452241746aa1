"""Cleaning of documentation paragraphs: quality filter, language ID, exact and near-duplicate removal,
weak pairs and held-out sets built from documents, and the leak check."""

from __future__ import annotations

import json

import pytest
from doc_fixtures import DE, EN, HEADINGS

from data_prep.clean import Deduplicator, LanguageCheck, leak_key, quality_problem, sentences
from data_prep.files import DataError
from data_prep.heldout import Fingerprints, HeldoutRules, check_no_leakage, heading_sets, longdoc_set
from data_prep.sources import Document, Section
from data_prep.weakpairs import PairLimits, cpt_pairs, finetune_pairs, long_document, long_pairs


def _doc(lang: str, doc_id: str, idx: list[int], source: str = "src") -> Document:
    text = {"en": EN, "de": DE}[lang]
    return Document(source, doc_id, lang, f"{HEADINGS[lang][idx[0]]} guide",
                    [Section(f"k{i}", HEADINGS[lang][i], [text[i], text[(i + 1) % 8]], 2) for i in idx])


def test_quality_filter_reasons():
    assert quality_problem(EN[0], "en") is None
    assert quality_problem("Click OK.", "en") == "too_short"
    assert quality_problem("/usr/bin/apt-get -o Dpkg::Options::=--force-confold 1.2.3 4.5.6 7.8.9", "en") == "not_prose"
    assert quality_problem("软件包管理器记录计算机上安装的每个程序", "zh") is None  # unspaced scripts: fewer letters


def test_language_id_drops_untranslated_paragraphs_and_counts_them():
    check = LanguageCheck(threshold=0.5)
    assert check.matches(DE[0], "de") and check.matches(EN[0], "en")
    assert not check.matches(EN[1], "de")  # an English paragraph left in a German page
    assert check.mismatches[("de", "en")] == 1
    assert check.matches("Pakkesystemet holder styr på alle programmer som er installert på maskinen.", "nb")


def test_exact_normalised_and_near_duplicates():
    dedup = Deduplicator(threshold=0.8)
    assert dedup.check(EN[0], "en") is None
    assert dedup.check("  " + EN[0].upper().replace(" ", "\n "), "en") == "duplicate"  # case and spacing
    assert dedup.check(EN[0].replace("computer", "computers"), "en") == "near_duplicate"
    assert dedup.check(EN[1], "en") is None
    assert dedup.check(EN[0], "de") is None  # per language
    dedup.check(EN[2], "en", owner="heldout")
    assert dedup.check(EN[2].replace("months", "month"), "en") == "heldout_near_duplicate"


def test_sentences_split_plain_text_in_several_scripts():
    assert sentences("One. Two! Three? 第一句。第二句。") == ["One.", "Two!", "Three?", "第一句。", "第二句。"]


def test_weak_pairs_kinds_and_crosslingual_alignment():
    docs = [_doc("en", "p1", [0, 1]), _doc("de", "p1", [0, 1])]
    records = cpt_pairs(docs, PairLimits(min_section_chars=50), seed=0)
    assert {r.source for r in records} == {"src:heading", "src:title", "src:xling"}
    xling = [r for r in records if r.source.endswith("xling")]
    assert xling and all((r.query_lang, r.doc_lang) == ("de", "en") for r in xling)
    assert any(r.query.startswith(DE[0]) and r.positive.startswith(EN[0]) for r in xling)
    heading = [r for r in records if r.source.endswith(":heading")]
    assert {(r.query, r.positive.split("\n")[0]) for r in heading} >= {(HEADINGS["en"][0], EN[0])}
    two = Document("src", "p2", "en", "Two sentences", [Section("a", "Both", [EN[0] + " " + EN[1]])])
    (sentence,) = [r for r in cpt_pairs([two], PairLimits(min_section_chars=50)) if r.source == "src:sentence"]
    assert (sentence.query, sentence.positive) == (EN[0], EN[1])
    ft = finetune_pairs(docs, PairLimits(min_section_chars=50))
    assert any(r.source.endswith("xheading") and r.query == HEADINGS["de"][1] and r.positive.startswith(EN[1])
               for r in ft)


def test_long_document_spans_and_pairs():
    docs = [_doc("en", f"p{n}", [n % 8, (n + 3) % 8]) for n in range(3)]
    longs = [long_document(d) for d in docs]
    for long, doc in zip(longs, docs):
        for span, section in zip(long.sections, doc.sections):
            assert long.text[span["start"]:span["end"]] == section.text()
    records = long_pairs(longs, num_negatives=2)
    assert len(records) == 3 and all(len(r.negatives) == 2 and r.positive not in r.negatives for r in records)


def test_heading_sets_split_by_page_and_drop_untranslated_or_repeated_headings():
    en = [_doc("en", f"p{n}", [n, n + 4]) for n in range(4)]
    de = [_doc("de", f"p{n}", [n, n + 4]) for n in range(4)]
    de[0].sections[0].heading = en[0].sections[0].heading  # left untranslated: no query
    de[1].sections[0].heading = de[2].sections[0].heading = "Gleiche Überschrift"  # ambiguous: no query
    sets = heading_sets({"en": en, "de": de}, HeldoutRules(min_section_chars=50, dev_fraction=0.5), seed=1)
    assert set(sets) == {"mono-en", "mono-de", "cross-de"}
    mono = sets["mono-de"]
    texts = {q["text"] for q in mono.queries.values()}
    assert en[0].sections[0].heading not in texts and "Gleiche Überschrift" not in texts
    assert len(mono.queries) == 8 - 3
    test_pages = {q.split(":")[1].split("#")[0] for q in mono.qrels["test"]}
    dev_pages = {q.split(":")[1].split("#")[0] for q in mono.qrels["dev"]}
    assert test_pages and dev_pages and not test_pages & dev_pages
    for qid, rels in sets["cross-de"].qrels["test"].items():
        (doc_id,) = rels
        assert sets["cross-de"].corpus[doc_id]["text"] == sets["mono-en"].corpus[doc_id]["text"]  # English corpus
        assert qid.startswith("de:")
    assert all(not doc["title"] and HEADINGS["en"][0] not in doc["text"] for doc in sets["mono-en"].corpus.values())


def test_longdoc_needles_record_character_spans():
    docs = {"en": [_doc("en", "long", list(range(8)))]}
    data, needles = longdoc_set(docs, HeldoutRules(min_section_chars=50, min_long_chars=500, needles_per_doc=3))
    text = data.corpus["en:long"]["text"]
    assert len(needles) == 3
    for needle in needles:
        key = needle.section_key
        index = int(key[1:])
        assert text[needle.char_start:needle.char_end].startswith(EN[index])
        assert data.queries[needle.query_id]["text"] == HEADINGS["en"][index]
    with pytest.raises(DataError, match="no held-out page of 99999\\+ characters"):
        longdoc_set(docs, HeldoutRules(min_long_chars=99999))


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


HELD = EN[3] + " " + EN[4]  # a held-out paragraph of two sentences


@pytest.mark.parametrize("leak", [
    HELD,  # exact
    "  " + HELD.upper().replace(" ", "  "),  # normalised: case and spacing
    "\uff30" + HELD[1:],  # NFKC: a full-width letter
    "Intro line.\n" + HELD,  # one line of a multi-line document
    "Something else entirely. " + EN[4],  # one long held-out sentence inside other text
    "Gleiche Überschrift",  # a held-out heading
])
def test_leak_check_finds_heldout_text_in_any_training_file(tmp_path, leak):
    fingerprints = Fingerprints.of([Document("src", "h", "en", "Title", [Section("k", "Gleiche Überschrift",
                                                                                 [HELD])])])
    _write_jsonl(tmp_path / "mlm" / "en.jsonl", [{"text": EN[0]}])
    _write_jsonl(tmp_path / "pairs" / "cpt.jsonl", [{"query": EN[1], "positive": EN[2], "negatives": [EN[5]]}])
    assert check_no_leakage(tmp_path, fingerprints)["leaks"] == 0
    _write_jsonl(tmp_path / "long" / "en.jsonl", [{"text": EN[6]}, {"text": leak}])
    with pytest.raises(DataError, match=r"long/en.jsonl:2: held-out text"):
        check_no_leakage(tmp_path, fingerprints)


def test_leak_key_is_nfkc_casefold_whitespace():
    assert leak_key("  Ｆoo\u00a0 BAR\n") == leak_key("foo bar") == "foo bar"


def test_a_short_heldout_paragraph_inside_a_training_paragraph_is_found():
    """Found on the real data: a held-out one-sentence paragraph opened a longer training paragraph, and the
    first-sentence pair cut it out as a training query."""
    fingerprints = Fingerprints.of([Document("src", "h", "pt", "T", [Section("k", "", ["Clique em Energia."])])])
    assert fingerprints.hit("Clique em Energia. Depois escolha o modo de economia de energia que preferir.")
    assert fingerprints.hit("Escolha o modo de economia de energia que preferir.") is None
