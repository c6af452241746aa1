"""Masked-token accuracy of an MLM on text it never trained on (the held-out units, a held-out domain).

The training log's accuracy is measured on training batches, so it rises as the model memorises; this one
is the figure that says whether pre-training learned the languages. Masking is the training recipe's rule
(`MLMCollator`: 80% [MASK], 10% random, 10% kept) at a fixed seed, so two models are scored on the very same
positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from data_prep.beir import BeirData
from data_prep.tokenizer import special_ids

from .evaluate import doc_text
from .heads import MaskedLM
from .inference import tokenize_texts
from .mlm_data import MLMCollator

EVAL_MASK_PROBABILITY = 0.15  # BERT's rate: comparable across runs whatever the training rate was


@torch.inference_mode()
def mlm_accuracy(model: MaskedLM, tokenizer, texts: Sequence[str], max_length: int = 512,
                 mlm_probability: float = EVAL_MASK_PROBABILITY, seed: int = 0,
                 batch_tokens: int = 16384) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the masked tokens of `texts` (each cut to `max_length` tokens)."""
    if not texts:
        raise ValueError("texts: no text to score")
    sequences, _ = tokenize_texts(tokenizer, texts, max_length)
    collate = MLMCollator(special_ids(tokenizer), mlm_probability=mlm_probability, seed=seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, masked, loss_sum = 0, 0, 0.0
    start = 0
    try:
        while start < len(sequences):
            end, tokens = start, 0
            while end < len(sequences) and (end == start or tokens + len(sequences[end]) <= batch_tokens):
                tokens += len(sequences[end])
                end += 1
            out = model(collate(sequences[start:end]).to(device))
            correct += int(out.num_correct)
            masked += out.num_masked
            loss_sum += float(out.loss) * out.num_masked
            start = end
    finally:
        model.train(was_training)
    return {"accuracy": correct / masked if masked else float("nan"),
            "loss": loss_sum / masked if masked else float("nan"), "masked": masked, "texts": len(texts)}


def unseen_texts(data: BeirData, split: str = "test") -> list[str]:
    """The `split` queries and their relevant documents: held-out units of an eval set, which no training
    file holds (its other documents may be training distractors, so they are left out)."""
    qrels = data.qrels[split]
    relevant = dict.fromkeys(d for q in sorted(qrels) for d, rel in qrels[q].items() if rel > 0)
    return [data.queries[q]["text"] for q in sorted(qrels)] + [doc_text(data.corpus[d]) for d in relevant]
