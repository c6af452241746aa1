"""Masked-token accuracy of an MLM on text it never trained on (the held-out units, a held-out domain).

The training log's accuracy is measured on training batches, so it rises as the model memorises; this one
is the figure that says whether pre-training learned the languages. Masking is the training recipe's rule
(`MLMCollator`: 80% [MASK], 10% random, 10% kept) at a fixed seed, so two models are scored on the very same
positions.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_prep.beir import BeirData
from data_prep.tokenizer import special_ids

from .evaluate import doc_text
from .heads import MaskedLM
from .inference import run_batches, tokenize_texts
from .mlm_data import MLMCollator

EVAL_MASK_PROBABILITY = 0.15  # BERT's rate: comparable across runs whatever the training rate was


def mlm_accuracy(model: MaskedLM, tokenizer, texts: Sequence[str], max_length: int = 512,
                 mlm_probability: float = EVAL_MASK_PROBABILITY, seed: int = 0,
                 batch_tokens: int = 16384) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the masked tokens of `texts` (each cut to `max_length` tokens),
    in length-sorted batches of at most `batch_tokens` (the masked positions follow that order and `seed`)."""
    if not texts:
        raise ValueError("texts: no text to score")
    sequences, _ = tokenize_texts(tokenizer, texts, max_length)
    collate = MLMCollator(special_ids(tokenizer), mlm_probability=mlm_probability, seed=seed)
    totals = {"correct": 0, "masked": 0, "loss": 0.0}

    def add(_, out) -> None:
        totals["correct"] += int(out.num_correct)
        totals["masked"] += out.num_masked
        totals["loss"] += float(out.loss) * out.num_masked

    run_batches(model, sequences, batch_tokens, add, collate=collate)
    masked = totals["masked"]
    return {"accuracy": totals["correct"] / masked if masked else float("nan"),
            "loss": totals["loss"] / masked if masked else float("nan"), "masked": masked, "texts": len(texts)}


def unseen_texts(data: BeirData, split: str = "test") -> list[str]:
    """The `split` queries and their relevant documents: held-out units of an eval set, which no training
    file holds (its other documents may be training distractors, so they are left out)."""
    qrels = data.qrels[split]
    relevant = dict.fromkeys(d for q in sorted(qrels) for d, rel in qrels[q].items() if rel > 0)
    return [data.queries[q]["text"] for q in sorted(qrels)] + [doc_text(data.corpus[d]) for d in relevant]
