from __future__ import annotations

import json

import pytest
import torch

from data_prep.beir import BeirData, read_beir, write_beir
from data_prep.files import DataError
from data_prep.pairs import (
    PairRecord,
    hashing_encoder,
    linked_texts,
    mine_hard_negatives,
    read_pairs,
    select_pairs,
    write_pairs,
)


def test_pairs_round_trip(tmp_path):
    records = [PairRecord("Привет", "Hello", ("Bye",), "ru", "en", "test"), PairRecord("Hallo", "Hello")]
    write_pairs(records, tmp_path / "p.jsonl")
    assert read_pairs(tmp_path / "p.jsonl") == [records[0], PairRecord("Hallo", "Hello", (), "und", "und", "")]


@pytest.mark.parametrize("line, message", [
    ('{"query": "q", "positive": ""}', r"p.jsonl:2: field 'positive' must be a non-empty string"),
    ('{"query": "q", "positive": "d", "negatives": "x"}', r"p.jsonl:2: field 'negatives' must be a list"),
    ('{"query": "q", "positive": "d", "extra": 1}', r"p.jsonl:2: unknown field\(s\) \['extra'\]"),
    ('{"query": "q", "positive": "d", "negatives": [1, 2]}', r"p.jsonl:2: field 'negatives'"),
    ('{"query": "q", positive: 1}', r"p.jsonl:2: invalid_json"),
])
def test_bad_pair_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"query": "a", "positive": "b", "negatives": ["c"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_pairs(path)


def test_mining_skips_positives_and_respects_the_window():
    corpus = ["the cat sat on the mat", "the cat sat on a mat", "a cat sat on the mat!", "The cat sat on the mat",
              "dogs run in the park", "stock prices fell", "the cat is on the mat", "cats sit on mats"]
    records = [PairRecord("the cat sat on the mat?", "the cat sat on the mat")]
    encode = hashing_encoder()
    mined, stats = mine_hard_negatives(records, corpus + corpus[:2], encode, num_negatives=3,
                                       rank_window=(0, 10), progress=False)
    negatives = mined[0].negatives
    assert len(negatives) == 3 and len(set(negatives)) == 3
    assert "the cat sat on the mat" not in negatives and "The cat sat on the mat" not in negatives  # dup of positive
    # ranked by similarity: the first negative is the nearest non-positive
    scores = encode([records[0].query]) @ encode(negatives).T
    assert scores[0].tolist() == sorted(scores[0].tolist(), reverse=True)
    skipped, _ = mine_hard_negatives(records, corpus, encode, num_negatives=2, rank_window=(1, 10), progress=False)
    assert skipped[0].negatives == negatives[1:3]
    assert stats.skipped_as_positive >= 2


def test_linked_texts_are_the_components_of_the_pair_graph():
    records = [PairRecord("Heute", "Today"), PairRecord("Aujourd'hui", "今日"), PairRecord("今日", "today "),
               PairRecord("Morgen", "Tomorrow")]
    linked = linked_texts(records)
    today = {"heute", "today", "aujourd'hui", "今日"}  # normalised: case and whitespace folded
    assert linked["heute"] == linked["今日"] == today
    assert linked["morgen"] == {"morgen", "tomorrow"}


def test_mining_never_takes_a_linked_text_as_a_negative():
    # translation data pairs each text with only some of its equivalents: "Heute" is never paired with
    # "Aujourd'hui", yet it is a translation of it, and the nearest candidate by construction
    records = [PairRecord("Heute ist Montag", "Today is Monday"), PairRecord("Today is Monday", "Hoy es lunes"),
               PairRecord("Hoy es lunes", "Heute ist Montag!"), PairRecord("Morgen ist Dienstag", "Tomorrow")]
    corpus = ["Today is Monday", "Hoy es lunes", "Heute ist Montag!", "Tomorrow", "Heute ist Dienstag",
              "stock prices fell"]
    encode = hashing_encoder()
    mined, stats = mine_hard_negatives(records, corpus, encode, num_negatives=2, rank_window=(0, 10),
                                       progress=False)
    for record in mined[:3]:
        assert not {"Today is Monday", "Hoy es lunes", "Heute ist Montag!"} & set(record.negatives), record
    assert "Heute ist Dienstag" in mined[0].negatives  # the nearest real negative survives
    assert stats.skipped_as_positive >= 6
    # the old behaviour, on request: only the record's own positive(s) and the query are excluded
    kept, _ = mine_hard_negatives(records, corpus, encode, num_negatives=2, rank_window=(0, 10), progress=False,
                                  exclude_linked=False)
    assert "Heute ist Montag!" in kept[0].negatives + kept[1].negatives


def test_mining_rejects_unnormalised_vectors():
    with pytest.raises(ValueError, match="L2-normalised"):
        mine_hard_negatives([PairRecord("q", "d")], ["a", "b"], lambda texts: torch.ones(len(texts), 4),
                            progress=False)


def _beir(tmp_path):
    data = BeirData(corpus={"d1": {"title": "", "text": "Hello"}, "d2": {"title": "T", "text": "World"}},
                    queries={"q1": {"text": "Hallo", "lang": "de"}, "q2": {"text": "Welt"}},
                    qrels={"test": {"q1": {"d1": 1}}, "dev": {"q2": {"d2": 1}}})
    return data, write_beir(data, tmp_path / "beir")


def test_select_pairs_keeps_named_sources_and_drops_queries_that_name_two_texts_of_one_language():
    records = [
        PairRecord("Options", "The options of ls.", (), "en", "en", "manpages:ft-heading"),
        PairRecord("OPTIONS ", "The options of cp.", (), "en", "en", "manpages:ft-heading"),  # same query, 2nd text
        PairRecord("Optionen", "Die Optionen von ls.", (), "de", "de", "manpages:ft-heading"),
        PairRecord("Optionen", "The options of ls.", (), "de", "en", "manpages:xheading"),  # one per language
        PairRecord("Redes", "Las redes.", (), "es", "es", "gnome-user-docs:ft-heading"),
        PairRecord("s", "s", (), "en", "fr", "django"),
        PairRecord("Name", "x" * 20, (), "en", "en", "manpagesextra"),  # a prefix, not a kind of manpages
    ]
    assert select_pairs(records) == records
    assert select_pairs(records, ["manpages"]) == records[:4]
    assert select_pairs(records, ["manpages", "gnome-user-docs"], unique_queries=True) == records[2:5]
    # ambiguity is judged among the kept records: cp's "OPTIONS" alone is unique
    assert select_pairs(records[1:], ["manpages"], unique_queries=True) == records[1:4]
    assert select_pairs(records, ["udhr"]) == []


def test_beir_round_trip(tmp_path):
    data, directory = _beir(tmp_path)
    back = read_beir(directory)
    assert back.corpus == data.corpus and back.queries == data.queries and back.qrels == data.qrels
    assert (directory / "qrels" / "test.tsv").read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"


@pytest.mark.parametrize("target, content, message", [
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td9\t1\n", r"test.tsv:2: field 'corpus-id' 'd9'"),
    ("qrels/test.tsv", "qid\tdid\tscore\n", r"test.tsv:1: header must be"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test.tsv:2: field 'score'"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1 d1 1\n", r"test.tsv:2: expected 3 tab-separated"),
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', r"corpus.jsonl:2: duplicate _id"),
    ("queries.jsonl", '{"_id": "q1", "text": "a"}\n{"_id": "q2"}\n', r"queries.jsonl:2: field 'text'"),
])
def test_beir_validation_names_file_and_line(tmp_path, target, content, message):
    _, directory = _beir(tmp_path)
    (directory / target).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_beir(directory)


def test_beir_missing_test_split(tmp_path):
    _, directory = _beir(tmp_path)
    (directory / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataError, match=r"test.tsv: qrels file not found"):
        read_beir(directory)
    json.dumps(read_beir(directory, required=()).summary())
