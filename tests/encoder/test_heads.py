import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from model_helpers import random_batch, tiny_config

from encoder.batch import IGNORE_INDEX, UnpaddedBatch
from encoder.heads import (
    MaskedLM,
    Reranker,
    TextRepresentationModel,
    dense_scores,
    hybrid_scores,
    idf_prior,
    pair_match_types,
    sparse_scores,
)

SPECIALS = (0, 1, 2, 3)


def test_mlm_head_runs_only_on_masked_positions():
    torch.manual_seed(0)
    model = MaskedLM(tiny_config()).eval()
    batch = random_batch([10, 3, 25], model.config.vocab_size, seed=1)
    labels = torch.full_like(batch.input_ids, IGNORE_INDEX)
    masked = torch.tensor([0, 4, 11, 20, 37])
    labels[masked] = batch.input_ids[masked]
    out = model(batch.with_labels(labels))
    assert out.logits.shape == (5, model.config.vocab_size)  # [M, V], never [T, V]
    with torch.no_grad():
        full_logits = model.head(model.encoder(batch))  # test-only: every row through the last layer
    expected = F.cross_entropy(full_logits[masked], labels[masked])
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert out.num_masked == 5
    # the decoder is tied to the input embedding
    assert model.head.decoder_weight is model.encoder.embeddings.word_embeddings.weight


@pytest.mark.parametrize("tied", [True, False])
def test_mlm_step_moves_the_embeddings_of_unread_tokens_only_through_a_tied_decoder(tied):
    # the tied softmax pushes every vocabulary row at every step (rare tokens drift together); an own decoder
    # leaves the input embedding of a token no sequence contains exactly where it was
    torch.manual_seed(0)
    config = tiny_config(tie_word_embeddings=tied)
    model = MaskedLM(config)
    assert (model.head.decoder_weight is model.encoder.embeddings.word_embeddings.weight) == tied
    batch = random_batch([12, 9], 40, seed=3)  # ids < 40 only
    labels = torch.full_like(batch.input_ids, IGNORE_INDEX)
    labels[::3] = batch.input_ids[::3]
    before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    model(batch.with_labels(labels)).loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    after = model.encoder.embeddings.word_embeddings.weight.detach()
    unread = torch.arange(40, config.vocab_size)
    assert (after[:40] != before[:40]).any()  # read tokens always learn
    assert (after[unread] != before[unread]).any(dim=1).all() == tied
    assert (after[unread] == before[unread]).all() == (not tied)
    names = {name for name, _ in model.named_parameters()}
    assert ("head.decoder_weight" in names) == (not tied)  # tied: reported once, under the embedding


def test_bm25_scaled_sparse_weights_by_hand():
    torch.manual_seed(2)
    config = tiny_config(sparse_tf_k1=1.2, sparse_length_b=0.75)
    model = TextRepresentationModel(config, special_token_ids=SPECIALS).eval()
    with torch.no_grad():
        model.head.sparse_linear.weight.zero_()  # every token weighs its bias, 1 (before scaling)
        model.head.mean_text_length.fill_(3.0)
    # non-special lengths 4 and 2; token 7 three times in the first text
    batch = UnpaddedBatch.from_sequences([[0, 7, 9, 7, 7, 2], [0, 9, 11, 2]])
    with torch.no_grad():
        got = model(batch).sparse.to_dicts()

    def bm25(tf, length):
        return tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / 3.0))

    assert got[0].keys() == {7, 9} and got[1].keys() == {9, 11}
    assert math.isclose(got[0][7], bm25(3, 4), rel_tol=1e-5) and math.isclose(got[0][9], bm25(1, 4), rel_tol=1e-5)
    assert math.isclose(got[1][9], bm25(1, 2), rel_tol=1e-5)
    with torch.no_grad():
        model.head.mean_text_length.zero_()  # unknown mean length: tf saturation only
        got = model(batch).sparse.to_dicts()
    assert math.isclose(got[0][7], 3 * 2.2 / (3 + 1.2), rel_tol=1e-5) and math.isclose(got[1][9], 1.0, rel_tol=1e-5)


def test_bm25_scaled_sparse_ranks_repetition_up_and_length_down():
    # a max-pooled binary match ties all three documents; BM25's scaling puts the page that repeats the query
    # word first and the long page that names it once last
    torch.manual_seed(3)
    docs = [[0, 20, 21, 22, 23, 2], [0, 20, 20, 20, 21, 2], [0, 20] + list(range(30, 60)) + [2]]
    for k1, expected in ((0.0, None), (1.2, [1, 0, 2])):
        model = TextRepresentationModel(tiny_config(sparse_tf_k1=k1), special_token_ids=SPECIALS).eval()
        with torch.no_grad():
            model.head.sparse_linear.weight.zero_()
            model.head.mean_text_length.fill_(8.0)
            q = model(UnpaddedBatch.from_sequences([[0, 20, 2]])).sparse
            scores = sparse_scores(q, model(UnpaddedBatch.from_sequences(docs)).sparse)[0]
        if expected is None:
            assert torch.allclose(scores, scores[0].expand(3))
        else:
            assert scores.argsort(descending=True).tolist() == expected


def naive_sparse(batch: UnpaddedBatch, token_weights: torch.Tensor) -> list[dict[int, float]]:
    out = []
    for ids, weights in zip(batch.split(batch.input_ids), batch.split(token_weights)):
        d: dict[int, float] = {}
        for tok, w in zip(ids.tolist(), weights.tolist()):
            if tok in SPECIALS or w <= 0:
                continue
            d[tok] = max(d.get(tok, 0.0), w)
        out.append(d)
    return out


def test_sparse_weights_max_over_repeats_and_drop_specials():
    torch.manual_seed(1)
    model = TextRepresentationModel(tiny_config(), special_token_ids=SPECIALS).eval()
    batch = UnpaddedBatch.from_sequences([[0, 7, 9, 7, 7, 2], [0, 9, 9, 3, 11, 2], [0, 2]])
    with torch.no_grad():
        hidden = model.encoder(batch)
        token_weights = F.relu(model.head.sparse_linear(hidden)).squeeze(-1)
        out = model.head(hidden, batch)
    got = out.sparse.to_dicts()
    expected = naive_sparse(batch, token_weights)
    assert [sorted(d) for d in got] == [sorted(d) for d in expected]
    for g, e in zip(got, expected):
        for tok in e:
            assert abs(g[tok] - e[tok]) < 1e-6
    assert got[2] == {}  # only specials
    assert all(tok not in SPECIALS for d in got for tok in d)


def test_sparse_scores_equal_dictionary_dot_products():
    torch.manual_seed(2)
    model = TextRepresentationModel(tiny_config(), special_token_ids=SPECIALS).eval()
    queries = random_batch([5, 9], 40, seed=3)  # small vocab range: many shared ids
    docs = random_batch([12, 3, 30], 40, seed=4)
    with torch.no_grad():
        q, d = model(queries), model(docs)
    scores = sparse_scores(q.sparse, d.sparse)
    for i, qd in enumerate(q.sparse.to_dicts()):
        for j, dd in enumerate(d.sparse.to_dicts()):
            expected = sum(w * dd[t] for t, w in qd.items() if t in dd)
            assert abs(scores[i, j].item() - expected) < 1e-5


def test_sparse_scores_are_differentiable():
    torch.manual_seed(3)
    model = TextRepresentationModel(tiny_config(), special_token_ids=SPECIALS)
    out = model(random_batch([6, 6], 20, seed=5))
    sparse_scores(out.sparse, out.sparse).sum().backward()
    assert model.head.sparse_linear.weight.grad.abs().sum() > 0


def test_dense_matryoshka_and_hybrid():
    torch.manual_seed(4)
    model = TextRepresentationModel(tiny_config(), special_token_ids=SPECIALS).eval()
    batch = random_batch([8, 20, 3], model.config.vocab_size, seed=6)
    with torch.no_grad():
        hidden = model.encoder(batch)
        out = model.head(hidden, batch)
    cls = hidden[[0, 8, 28]]
    assert torch.allclose(out.dense, F.normalize(cls, dim=-1), atol=1e-6)
    assert torch.allclose(out.dense.norm(dim=-1), torch.ones(3))
    small = out.dense_at(32)
    assert small.shape == (3, 32) and torch.allclose(small, F.normalize(cls[:, :32], dim=-1), atol=1e-6)
    hybrid = hybrid_scores(out, out, sparse_weight=0.25)
    expected = dense_scores(out.dense, out.dense) + 0.25 * sparse_scores(out.sparse, out.sparse)
    assert torch.allclose(hybrid, expected)


def test_mean_pooling_averages_every_token_of_each_sequence():
    torch.manual_seed(5)
    model = TextRepresentationModel(tiny_config(pooling="mean"), special_token_ids=SPECIALS).eval()
    batch = random_batch([1, 7, 129, 2], model.config.vocab_size, seed=2)
    with torch.no_grad():
        hidden = model.encoder(batch)
        out = model.head(hidden, batch)
    expected = torch.stack([h.double().mean(0) for h in batch.split(hidden)])
    assert torch.allclose(out.cls_hidden.double(), expected, atol=1e-6)
    assert torch.allclose(out.dense.double(), F.normalize(expected, dim=-1), atol=1e-6)
    assert torch.allclose(out.dense[0], F.normalize(hidden[0], dim=-1), atol=1e-6)  # a 1-token sequence: itself
    # one sequence alone gives the same embedding as inside the packed batch
    alone = UnpaddedBatch.from_sequences([batch.split(batch.input_ids)[2].tolist()])
    with torch.no_grad():
        assert torch.allclose(model(alone).dense[0], out.dense[2], atol=1e-5)


def test_reranker_one_logit_per_pair_independent_of_packing():
    torch.manual_seed(5)
    model = Reranker(tiny_config()).eval()
    batch = random_batch([12, 4, 31], model.config.vocab_size, seed=7)
    with torch.no_grad():
        scores = model(batch)
        alone = torch.cat([model(UnpaddedBatch.from_sequences([s.tolist()]))
                           for s in batch.split(batch.input_ids)])
    assert scores.shape == (3,)
    assert torch.allclose(scores, alone, atol=1e-5)


def test_mean_pooled_reranker_reads_the_mean_of_every_token_state():
    torch.manual_seed(5)
    model = Reranker(tiny_config(pooling="mean")).eval()
    batch = random_batch([1, 7, 129, 2], model.config.vocab_size, seed=3)
    with torch.no_grad():
        scores = model(batch)
        hidden = model.encoder(batch)
        mean = torch.stack([h.double().mean(0) for h in batch.split(hidden)]).float()
        assert torch.allclose(scores, model.head(mean), atol=1e-5)
        assert (scores - model.head(hidden[batch.first_token_index])).abs().max() > 1e-3  # not the CLS state
        alone = torch.cat([model(UnpaddedBatch.from_sequences([s.tolist()])) for s in batch.split(batch.input_ids)])
    assert torch.allclose(scores, alone, atol=1e-5)


def test_pair_match_types_by_hand():
    """Type 1 on the query and document tokens the two share, within each pair only; the first token, the
    separators and a pair without a separator get 0."""
    sep = 2
    pairs = [[0, 5, 6, 2, 2, 6, 7, 5, 5, 2],  # 5 and 6 on both sides; 7 only in the document
             [0, 8, 2, 2, 5, 9, 2],  # 5 is in the first pair's query, not this one's: no match across pairs
             [0, 4, 4, 7]]  # no separator: all query, nothing to match
    batch = UnpaddedBatch.from_sequences(pairs)
    types = pair_match_types(batch, sep, vocab_size=16)
    assert batch.split(types)[0].tolist() == [0, 1, 1, 0, 0, 1, 0, 1, 1, 0]
    assert batch.split(types)[1].tolist() == [0] * 7
    assert batch.split(types)[2].tolist() == [0] * 4


def test_a_reranker_with_match_types_scores_by_them_and_packing_changes_nothing():
    torch.manual_seed(5)
    config = tiny_config(type_vocab_size=2, pair_match_types=True)
    model = Reranker(config).eval()
    pairs = [[0, 5, 6, 2, 2, 6, 7, 5, 2], [0, 5, 6, 2, 2, 8, 7, 9, 2], [0, 11, 2, 2, 12, 11, 2]]
    with torch.no_grad():
        scores = model(UnpaddedBatch.from_sequences(pairs))
        alone = torch.cat([model(UnpaddedBatch.from_sequences([p])) for p in pairs])
        plain = Reranker(replace(config, pair_match_types=False)).eval()
        plain.load_state_dict(model.state_dict())
        unmarked = plain(UnpaddedBatch.from_sequences(pairs))
        # type 0 everywhere is what the model without match types computes; the marks change the score
        all_zero = model.head(model.encoder.cls_states(UnpaddedBatch.from_sequences(pairs)))
    assert torch.allclose(scores, alone, atol=1e-5)
    assert torch.allclose(unmarked, all_zero, atol=1e-6)
    assert not torch.allclose(scores[[0, 2]], unmarked[[0, 2]], atol=1e-4)  # pairs with matches
    assert torch.allclose(scores[1], unmarked[1], atol=1e-6)  # no shared token: nothing marked
    with pytest.raises(ValueError, match="type_vocab_size >= 2"):
        tiny_config(type_vocab_size=1, pair_match_types=True)


def test_idf_prior_is_the_root_of_bm25_idf_ranked_by_rarity():
    docs = [[5, 6, 7], [5, 6], [5, 8], [5]]
    prior = idf_prior(docs, 10).double()
    n = len(docs)
    df = {5: 4, 6: 2, 7: 1, 8: 1}
    idf = {t: math.log1p((n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
    mean = sum(idf[t] for doc in docs for t in doc) / sum(len(doc) for doc in docs)
    for token, value in idf.items():  # each side carries the root: a matched token counts its idf once
        assert prior[token].item() == pytest.approx(math.sqrt(value / mean), rel=1e-6)
    assert prior[5] < prior[6] < prior[7] == prior[8] < prior[9]  # unseen ids: the rarest of all
    with pytest.raises(ValueError, match="at least one document"):
        idf_prior([], 10)


def test_token_prior_scales_the_lexical_weights_and_old_checkpoints_load_without_one():
    torch.manual_seed(2)
    model = TextRepresentationModel(tiny_config(), special_token_ids=SPECIALS).eval()
    with torch.no_grad():
        model.head.sparse_linear.bias.fill_(3.0)  # every token weighted
    batch = random_batch([9, 4], model.config.vocab_size, seed=3)
    with torch.no_grad():
        before = model(batch).sparse.to_dicts()
        model.head.token_prior[batch.input_ids[0]] = 2.5  # the first token's id
        after = model(batch).sparse.to_dicts()
    first = batch.input_ids[0].item()
    assert after[0][first] == pytest.approx(2.5 * before[0][first], rel=1e-6)
    assert all(after[1][t] == pytest.approx(w) for t, w in before[1].items() if t != first)
    state = {k: v for k, v in model.state_dict().items() if k != "head.token_prior"}
    fresh = TextRepresentationModel(tiny_config(), special_token_ids=SPECIALS)
    fresh.load_state_dict(state)  # a checkpoint from before the prior: strict load, prior = ones
    assert torch.all(fresh.head.token_prior == 1)


def test_fit_sparse_statistics_refits_a_prior_and_mean_length_but_adds_no_prior_to_a_head_without_one():
    from encoder.heads import fit_sparse_statistics

    docs = [[5, 6, 7], [5, 6], [5, 8], [5]]
    plain = TextRepresentationModel(tiny_config(), special_token_ids=SPECIALS).head
    fit_sparse_statistics(plain, docs)
    assert torch.all(plain.token_prior == 1) and float(plain.mean_text_length) == 0  # no prior, no k1: nothing
    scaled = TextRepresentationModel(tiny_config(sparse_tf_k1=1.2), special_token_ids=SPECIALS).head
    with torch.no_grad():
        scaled.token_prior.copy_(idf_prior([[9, 9, 4]], scaled.vocab_size))
    fit_sparse_statistics(scaled, docs)
    assert torch.allclose(scaled.token_prior, idf_prior(docs, scaled.vocab_size))
    assert float(scaled.mean_text_length) == pytest.approx(2.0)


def test_sparse_init_ones_starts_the_head_at_its_prior_and_random_does_not():
    docs = [[5, 6, 7], [5, 6], [5, 8], [5]]
    batch = random_batch([9, 4], tiny_config().vocab_size, seed=3)
    weights = {}
    for init in ("ones", "random"):
        torch.manual_seed(0)
        model = TextRepresentationModel(tiny_config(sparse_init=init), special_token_ids=SPECIALS).eval()
        with torch.no_grad():
            model.head.token_prior.copy_(idf_prior(docs, model.config.vocab_size))
            weights[init] = model(batch).sparse
    prior = idf_prior(docs, tiny_config().vocab_size)
    # max-pooled, so each (text, id) weight is the id's prior exactly: the learned factor is 1
    assert torch.allclose(weights["ones"].weights, prior[weights["ones"].token_ids], rtol=1e-6)
    assert not torch.allclose(weights["random"].weights, prior[weights["random"].token_ids], rtol=1e-3)
    with pytest.raises(ValueError, match="model.sparse_init"):
        tiny_config(sparse_init="zeros")
