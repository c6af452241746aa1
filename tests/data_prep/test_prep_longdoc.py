"""The needle sets and long training pairs: one relevant document, needles where recorded, lengths on target,
determinism, and nothing but the needle answering a query."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from data_prep.embedded import dominant_script
from data_prep.files import DataError
from data_prep.longdoc import (
    DEFAULT_LENGTHS,
    DEFAULT_POSITIONS,
    MIN_MATCH_CHARS,
    build_longdoc_sets,
    check_longdoc_set,
    long_training_pairs,
    pair_needle_candidates,
    read_longdoc_set,
    write_longdoc_sets,
)


def test_every_bucket_has_one_relevant_document_per_query(needle_sets):
    assert sorted(needle_sets) == list(DEFAULT_LENGTHS)
    for data in needle_sets.values():
        qrels = data.beir.qrels["test"]
        assert len(qrels) == len(data.needles) == len(data.beir.queries) >= 2 * len(data.beir.corpus) - 2
        for qid, rels in qrels.items():
            assert rels == {data.needles[qid].doc_id: 1}
        assert {n.unit_id for n in data.needles.values()} == {d.split("-", 1)[1].rsplit("-", 1)[0]
                                                              for d in data.beir.corpus}


def test_needle_is_at_its_recorded_token_offset(needle_sets, tiny_assets, tiny_tokenizer):
    backend = tiny_tokenizer.backend_tokenizer
    units = tiny_assets.units
    for data in needle_sets.values():
        for needle in data.needles.values():
            ids = backend.encode(data.beir.corpus[needle.doc_id]["text"], add_special_tokens=True).ids
            alone = backend.encode(units[needle.unit_id].texts[needle.doc_lang], add_special_tokens=False).ids
            assert len(ids) == needle.doc_tokens
            assert needle.needle_tokens == len(alone)
            assert ids[needle.token_offset:needle.token_offset + len(alone)] == alone
            assert abs(needle.relative_position - needle.position) <= 0.05
            # the realised position is where the needle really sits among the document's tokens
            spare = needle.doc_tokens - 2 - needle.needle_tokens
            assert abs((needle.token_offset - 1) / spare - needle.relative_position) <= 0.05


def test_lengths_within_ten_percent_and_positions_spread(needle_sets):
    for length, data in needle_sets.items():
        lengths = {n.doc_id: n.doc_tokens for n in data.needles.values()}
        assert all(0.9 * length <= n <= length for n in lengths.values()), (length, lengths)
        assert {n.position for n in data.needles.values()} == set(DEFAULT_POSITIONS)
        past = [n for n in data.needles.values() if n.token_offset >= 512]
        assert past, f"{length}: no needle past token 512"


def test_several_languages_and_scripts(needle_sets):
    for data in needle_sets.values():
        langs = {n.doc_lang for n in data.needles.values()}
        scripts = {dominant_script(data.beir.corpus[n.doc_id]["text"]) for n in data.needles.values()}
        assert len(langs) >= 6 and len(scripts) >= 4, (langs, scripts)
        assert all(n.query_lang != n.doc_lang for n in data.needles.values())


def test_deterministic_for_a_seed(tiny_assets, tiny_tokenizer, needle_sets, tmp_path):
    units = tiny_assets.units
    again = build_longdoc_sets(units, tiny_tokenizer, lengths=(1024,), seed=0)[1024]
    assert again.beir.corpus == needle_sets[1024].beir.corpus
    assert again.needles == needle_sets[1024].needles
    other = build_longdoc_sets(units, tiny_tokenizer, lengths=(1024,), seed=1)[1024]
    assert other.beir.corpus != again.beir.corpus
    path = write_longdoc_sets({1024: again}, tmp_path)[1024]
    read = read_longdoc_set(path)
    assert read.needles == again.needles and read.beir.qrels == again.beir.qrels


def test_no_filler_answers_a_query(needle_sets, tiny_assets):
    units = tiny_assets.units
    for data in needle_sets.values():
        check_longdoc_set(data, units)
        for needle in data.needles.values():
            # every text of the needle's unit, in any language, sits in its own document only
            for text in units[needle.unit_id].texts.values():
                if len(text) >= MIN_MATCH_CHARS:
                    holders = [d for d, doc in data.beir.corpus.items() if text in doc["text"]]
                    assert holders in ([], [needle.doc_id]), (needle.query_id, holders)
            assert units[needle.unit_id].split in ("test", "dev")


def test_check_catches_a_leaked_needle(needle_sets, tiny_assets):
    data = copy.deepcopy(needle_sets[1024])
    needle = next(iter(data.needles.values()))
    other = next(d for d in data.beir.corpus if d != needle.doc_id)
    data.beir.corpus[other]["text"] += " " + tiny_assets.units[needle.unit_id].texts[needle.doc_lang]
    with pytest.raises(DataError, match="not its needle"):
        check_longdoc_set(data, tiny_assets.units)


def test_training_pairs_use_train_units_only(tiny_assets, tiny_tokenizer):
    units = tiny_assets.units
    records = long_training_pairs(units, tiny_tokenizer, lengths=(1024, 4096), docs_per_length=8,
                                  num_negatives=2, query_mode="same")
    # 8 needles per length, less any too long to be one (a UDHR article fills half a 1k document alone)
    assert 12 <= len(records) <= 16 and {r.source for r in records} == {"longdoc-1024", "longdoc-4096"}
    for record in records:
        assert len(tiny_tokenizer(record.query, add_special_tokens=False)["input_ids"]) <= 1024 // 2
    heldout = [t for u in units.values() if u.split != "train" for t in u.texts.values() if len(t) >= MIN_MATCH_CHARS]
    for record in records:
        assert record.query in record.positive
        assert len(record.negatives) == 2 and all(record.query not in n for n in record.negatives)
        for text in (record.query, record.positive, *record.negatives):
            assert not any(h in text for h in heldout)
    assert long_training_pairs(units, tiny_tokenizer, lengths=(1024,), docs_per_length=8) == \
        long_training_pairs(units, tiny_tokenizer, lengths=(1024,), docs_per_length=8)


def test_a_needle_longer_than_half_the_document_is_skipped_not_fatal(tiny_assets, tiny_tokenizer):
    # every candidate needle made 40x longer than it was: none fits half of a 1024-token document
    units = {k: dataclasses.replace(u, texts={lang: " ".join([t] * 40) for lang, t in u.texts.items()})
             if k in pair_needle_candidates(tiny_assets.units) else u for k, u in tiny_assets.units.items()}
    assert long_training_pairs(units, tiny_tokenizer, lengths=(1024,), docs_per_length=4) == []
