"""Masked-token accuracy on unseen text: the training recipe's masking at a fixed seed, summed over batches."""

from __future__ import annotations

import pytest
import torch

from data_prep.beir import BeirData
from data_prep.tokenizer import special_ids
from encoder.config import ModelConfig
from encoder.heads import MaskedLM
from encoder.inference import length_batches, tokenize_texts
from encoder.mlm_data import MLMCollator
from encoder.mlm_eval import mlm_accuracy, unseen_texts

TEXTS = ["Das Handbuch beschreibt die Paketverwaltung.", "Le manuel décrit la gestion des paquets.",
         "パッケージ管理について説明します。", "x", "A longer English sentence about mirrors and apt sources."] * 3


@pytest.fixture(scope="module")
def model(tiny_tokenizer) -> MaskedLM:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=special_ids(tiny_tokenizer).padded_vocab_size, hidden_size=32, num_layers=1,
                         num_heads=2, intermediate_size=64)
    return MaskedLM(config).eval()


def test_accuracy_is_the_masked_hits_of_the_training_masking_rule(model, tiny_tokenizer):
    result = mlm_accuracy(model, tiny_tokenizer, TEXTS, seed=3)
    # by hand: one batch in the same (length-sorted) order, the same collator and seed
    ids, _ = tokenize_texts(tiny_tokenizer, TEXTS, 512)
    (order,) = length_batches([len(s) for s in ids], 16384)
    batch = MLMCollator(special_ids(tiny_tokenizer), mlm_probability=0.15, seed=3)([ids[i] for i in order])
    with torch.no_grad():
        out = model(batch)
    assert result["masked"] == out.num_masked > 0
    assert result["accuracy"] == pytest.approx(int(out.num_correct) / out.num_masked)
    assert result["loss"] == pytest.approx(float(out.loss), rel=1e-5)
    # fixed seed: the same positions every time; another seed masks others
    assert mlm_accuracy(model, tiny_tokenizer, TEXTS, seed=3) == result
    assert mlm_accuracy(model, tiny_tokenizer, TEXTS, seed=4) != result


def test_small_batches_sum_to_the_masked_count_and_restore_the_mode(model, tiny_tokenizer):
    model.train()
    result = mlm_accuracy(model, tiny_tokenizer, TEXTS, batch_tokens=16)  # one text per batch
    assert model.training  # the caller's mode comes back
    model.eval()
    assert result["texts"] == len(TEXTS) and result["masked"] > 0 and 0.0 <= result["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="texts"):
        mlm_accuracy(model, tiny_tokenizer, [])


def test_unseen_texts_are_the_test_queries_and_their_relevant_documents():
    data = BeirData(corpus={"d1": {"title": "", "text": "relevant"}, "d2": {"title": "", "text": "distractor"},
                            "d3": {"title": "T", "text": "judged not relevant"}},
                    queries={"q1": {"text": "query one"}, "q2": {"text": "query two"}},
                    qrels={"test": {"q1": {"d1": 1, "d3": 0}}, "dev": {"q2": {"d2": 1}}})
    assert unseen_texts(data) == ["query one", "relevant"]
