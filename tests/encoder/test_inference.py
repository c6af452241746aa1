"""encode() / rerank(): awkward inputs return results in input order; truncation is reported once."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from encoder.config import ModelConfig
from encoder.heads import Reranker, TextRepresentationModel
from encoder.inference import encode, rerank, score_pairs, tokenize_pairs

AWKWARD = ["", "   \n\t ", "x" * 100_000, "Save changes", "Änderungen speichern", "保存更改"]


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    from data_prep.tokenizer import special_ids

    special = special_ids(tiny_tokenizer)
    config = ModelConfig(vocab_size=special.padded_vocab_size, hidden_size=64, num_layers=1, num_heads=2,
                         intermediate_size=128, hidden_dropout=0.0, max_position_embeddings=512)
    torch.manual_seed(0)
    return TextRepresentationModel(config, special.all_special), Reranker(config)


def test_encode_awkward_inputs_in_order_with_one_warning(models, tiny_tokenizer):
    trm, _ = models
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = encode(trm, tiny_tokenizer, AWKWARD, sparse=True, dim=32, batch_tokens=600)
    truncation = [w for w in caught if "truncated" in str(w.message)]
    assert len(truncation) == 1 and "1 of 6" in str(truncation[0].message)
    assert out.num_truncated == 1
    assert out.dense.shape == (6, 32)
    assert torch.allclose(out.dense.norm(dim=1), torch.ones(6), atol=1e-5)
    assert len(out.sparse_ids) == len(out.sparse_tokens) == 6
    assert out.sparse_ids[0] == {} and out.sparse_ids[1] == {}  # only specials: no lexical weights
    # input order: each text alone gives the same vector as inside the mixed batch
    for i in (0, 3, 5):
        alone = encode(trm, tiny_tokenizer, [AWKWARD[i]], dim=32).dense[0]
        assert torch.allclose(alone, out.dense[i], atol=1e-5)
    assert not torch.allclose(out.dense[3], out.dense[5])
    # decoded-token dicts carry readable keys
    assert all(isinstance(k, str) for k in out.sparse_tokens[3])


def test_encode_no_warning_when_nothing_is_cut(models, tiny_tokenizer):
    trm, _ = models
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = encode(trm, tiny_tokenizer, ["short text", ""])
    assert out.num_truncated == 0 and out.sparse is None


def test_rerank_awkward_inputs_and_pair_truncation(models, tiny_tokenizer):
    _, reranker = models
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = rerank(reranker, tiny_tokenizer, "", AWKWARD)
        long_query = rerank(reranker, tiny_tokenizer, "y" * 100_000, ["", "doc"])
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    assert long_query.shape == (2,) and torch.isfinite(long_query).all()
    assert len([w for w in caught if "truncated" in str(w.message)]) == 2  # one per call
    pairs = [("q", "a b c"), ("long query " * 50, "doc " * 400)]
    direct = score_pairs(reranker, tiny_tokenizer, pairs, max_length=128)
    reversed_order = score_pairs(reranker, tiny_tokenizer, pairs[::-1], max_length=128)
    assert torch.allclose(direct, reversed_order.flip(0), atol=1e-5)


def test_pair_truncation_cuts_the_document_first(tiny_tokenizer):
    query, doc = "short question", "word " * 1000
    (ids,), cut = tokenize_pairs(tiny_tokenizer, [(query, doc)], max_length=64)
    assert cut == 1 and len(ids) == 64
    full_query = tiny_tokenizer(query, add_special_tokens=False)["input_ids"]
    assert ids[1:1 + len(full_query)] == full_query  # the query survives whole
    assert ids[0] == tiny_tokenizer.cls_token_id and ids[-1] == tiny_tokenizer.sep_token_id
    # both sides huge: each keeps about half
    (both,), _ = tokenize_pairs(tiny_tokenizer, [("q " * 1000, doc)], max_length=64)
    assert len(both) == 64


# lone surrogates (`surrogateescape` gives one per undecodable byte) and a surrogate pair; the same texts as the
# tokenizer must see them: U+FFFD for each lone one, the character for the pair
DIRTY = ["caf\udce9 menu", "\ud800", "emoji \ud83d\ude00 ok", "plain text"]
CLEANED = ["caf\ufffd menu", "\ufffd", "emoji \U0001f600 ok", "plain text"]


def test_lone_surrogates_become_replacement_characters(models, tiny_tokenizer):
    trm, reranker = models
    dirty = encode(trm, tiny_tokenizer, DIRTY, sparse=True)
    cleaned = encode(trm, tiny_tokenizer, CLEANED, sparse=True)
    assert torch.equal(dirty.dense, cleaned.dense) and dirty.sparse_ids == cleaned.sparse_ids
    assert not torch.allclose(dirty.dense[0], dirty.dense[2])  # distinct texts still get distinct vectors
    scores = rerank(reranker, tiny_tokenizer, "caf\udce9", DIRTY)
    assert torch.equal(scores, rerank(reranker, tiny_tokenizer, "caf\ufffd", CLEANED))
    pairs = score_pairs(reranker, tiny_tokenizer, list(zip(DIRTY, DIRTY[::-1])))
    assert torch.equal(pairs, score_pairs(reranker, tiny_tokenizer, list(zip(CLEANED, CLEANED[::-1]))))


def test_none_is_an_error_naming_its_index(models, tiny_tokenizer):
    trm, reranker = models
    with pytest.raises(TypeError, match=r"texts\[2\]: expected a string, got NoneType"):
        encode(trm, tiny_tokenizer, ["a", "b", None])
    with pytest.raises(TypeError, match=r"documents\[1\]: expected a string, got NoneType"):
        rerank(reranker, tiny_tokenizer, "q", ["d", None])
    with pytest.raises(TypeError, match=r"query: expected a string, got NoneType"):
        rerank(reranker, tiny_tokenizer, None, ["d"])
    with pytest.raises(TypeError, match=r"pairs\[1\]\[0\]: expected a string, got int"):
        score_pairs(reranker, tiny_tokenizer, [("q", "d"), (3, "d")])
    with pytest.raises(TypeError, match=r"texts: expected a sequence of strings, got one string"):
        encode(trm, tiny_tokenizer, "one string")


def test_collection_statistics_make_a_bm25_shaped_head_score_bm25_of_the_searched_corpus(tiny_tokenizer):
    # a head whose learned factor is 1 everywhere (W 0, bias 1), with an idf prior from other documents and
    # BM25's tf/length scaling: inside collection_statistics its sparse scores are BM25 over the searched corpus
    # (its idf, its mean length; the query's tokens scaled alike) over one constant, the corpus's mean idf
    from data_prep.beir import BeirData
    from encoder.evaluate import SPARSE_STATISTICS, encode_set, sparse_scores
    from encoder.heads import idf_prior

    special = set(tiny_tokenizer.all_special_ids)
    config = ModelConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_layers=1, num_heads=2,
                         intermediate_size=64, hidden_dropout=0.0, max_position_embeddings=512, sparse_tf_k1=1.2)
    model = TextRepresentationModel(config, tuple(sorted(special))).eval()
    texts = ["open the file menu and save the file", "the printer settings", "save the document as pdf",
             "settings of the file manager window", "print a test page", "a page about nothing in particular"]

    def ids(text):
        return [t for t in tiny_tokenizer(text, add_special_tokens=False)["input_ids"] if t not in special]

    with torch.no_grad():
        model.head.sparse_linear.weight.zero_()
        model.head.token_prior.copy_(idf_prior([ids("unrelated training text about mail"), ids("the the the")],
                                               config.vocab_size))
        model.head.mean_text_length.fill_(40.0)
    trained = model.head.token_prior.clone(), model.head.mean_text_length.clone()
    data = BeirData(corpus={f"d{i}": {"title": "", "text": t} for i, t in enumerate(texts)},
                    queries={"q0": {"text": "save the file"}, "q1": {"text": "printer page settings"}})
    with torch.no_grad():
        encoded = encode_set(model, tiny_tokenizer, data, ["q0", "q1"], sparse_statistics="collection")
        got = sparse_scores(encoded.queries.sparse, encoded.docs.sparse).double()
        as_trained = encode_set(model, tiny_tokenizer, data, ["q0", "q1"])  # the default: the trained values
        trained_scores = sparse_scores(as_trained.queries.sparse, as_trained.docs.sparse).double()
    assert torch.equal(model.head.token_prior, trained[0])  # the trained values are back after the block
    assert torch.equal(model.head.mean_text_length, trained[1])

    docs = [ids(t) for t in texts]
    n, avg = len(docs), sum(map(len, docs)) / len(docs)
    expected = torch.zeros(2, n, dtype=torch.float64)

    def saturated(tf, length):
        return tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / avg))

    for qi, query in enumerate(("save the file", "printer page settings")):
        q = ids(query)
        for di, doc in enumerate(docs):
            for t in set(q):
                tf, df = doc.count(t), sum(t in d for d in docs)
                if tf:
                    idf = math.log1p((n - df + 0.5) / (df + 0.5))
                    expected[qi, di] += idf * saturated(q.count(t), len(q)) * saturated(tf, len(doc))
    assert (expected > 0).sum() >= 6  # the case is not trivial
    assert torch.equal(got > 0, expected > 0)
    ratio = got[expected > 0] / expected[expected > 0]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
    assert not torch.allclose(got, trained_scores)  # the training documents' statistics score differently

    # the whole evaluation (test and dev splits under one fit) ranks by the collection-fitted scores; with this
    # query the trained statistics rank the corpus differently (d3 before d5)
    from encoder.evaluate import evaluate_trm, rank
    query = {"q": {"text": "page about the file"}}
    split = BeirData(corpus=data.corpus, queries=query, qrels={s: {"q": {"d0": 1}} for s in ("test", "dev")})
    with torch.no_grad():
        result = evaluate_trm(model, tiny_tokenizer, split, sparse_statistics="collection")
        runs = {}
        for statistics in SPARSE_STATISTICS:
            alone = encode_set(model, tiny_tokenizer, split, ["q"], sparse_statistics=statistics)
            runs[statistics] = rank(sparse_scores(alone.queries.sparse, alone.docs.sparse), ["q"], alone.doc_ids)
    assert runs["collection"] != runs["model"]
    assert result["runs"]["sparse"] == runs["collection"]
    assert torch.equal(model.head.token_prior, trained[0])


def test_evaluations_sharing_a_corpus_encode_it_once_with_a_doc_cache(models, tiny_tokenizer, monkeypatch):
    import encoder.evaluate as evaluate
    from data_prep.beir import BeirData

    trm, _ = models
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(
        ["open the file menu", "printer settings", "save the document", "a page about nothing"])}
    qrels = {"test": {"q0": {"d0": 1}, "q1": {"d1": 1}}}
    first = BeirData(corpus=corpus, queries={"q0": {"text": "file menu"}, "q1": {"text": "printer"}}, qrels=qrels)
    second = BeirData(corpus=corpus, queries={"q0": {"text": "Dateimenü"}, "q1": {"text": "Drucker"}}, qrels=qrels)
    other = BeirData(corpus={**corpus, "d3": {"title": "", "text": "another text"}}, queries=first.queries,
                     qrels=qrels)
    calls = []
    real_encode = evaluate.encode
    monkeypatch.setattr(evaluate, "encode", lambda model, tok, texts, **kw: calls.append(len(texts)) or
                        real_encode(model, tok, texts, **kw))
    cache: dict = {}
    with torch.no_grad():
        results = [evaluate.evaluate_trm(trm, tiny_tokenizer, data, doc_cache=cache)
                   for data in (first, second, other)]
        uncached = evaluate.evaluate_trm(trm, tiny_tokenizer, second)
    # queries + corpus; the same corpus again: queries only; a corpus that differs in one text: both again
    assert calls == [2, 4, 2, 2, 4, 2, 4]
    assert results[1]["runs"] == uncached["runs"]
    assert len(cache) == 2
