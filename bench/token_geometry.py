"""Do a model's token embeddings still tell words apart? The mean pairwise cosine of its input embedding rows in
bands of training frequency (frequent, middle, rarest), beside the same rows of a randomly initialised model.

    python bench/token_geometry.py runs/small/trm_ft/run/final [MORE_FINALS ...] [--band 1000] [--out JSON]

The frequency order is the TRM's idf prior (train.sparse_prior=idf: computed on its training documents; a token
they never had ranks with the rarest). Special tokens are left out.

Why: the words that make a new domain a domain are rare in the training data, and a mean-pooled dense vector of
that domain is built from them. With the MLM decoder tied to the embedding table, every softmax step pushes all
rare rows the same way, so after a short MLM run they point alike, and two texts of the new domain look alike to
the dense side. A random model's rows are nearly orthogonal (cosine ~0): a band far above that has lost the
difference between its words. Prints a table and writes the JSON (--out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from live_report import LiveReport, report_rows  # noqa: E402

from encoder.artifacts import load_final  # noqa: E402
from encoder.heads import TextRepresentationModel  # noqa: E402

BANDS = ("frequent", "middle", "rarest")


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """Mean cosine over all distinct pairs of rows (each row normalised)."""
    unit = F.normalize(rows.double(), dim=-1)
    total = unit.sum(0)
    n = len(unit)
    return float((total @ total - n) / (n * (n - 1)))


def band_ids(prior: torch.Tensor, special: list[int], band: int) -> dict[str, torch.Tensor]:
    """Token ids of the `band` most frequent, the `band` around the median and the `band` rarest (by idf)."""
    keep = torch.ones(len(prior), dtype=torch.bool)
    keep[special] = False
    ids = torch.arange(len(prior))[keep]
    order = ids[prior[keep].argsort(stable=True)]  # small idf = frequent first
    if len(order) < 3 * band:
        raise ValueError(f"--band {band}: the vocabulary has {len(order)} non-special tokens, fewer than 3 bands")
    middle = len(order) // 2 - band // 2
    return {"frequent": order[:band], "middle": order[middle:middle + band], "rarest": order[-band:]}


def geometry(model_dir: Path, band: int, seed: int = 0) -> dict:
    model, _, info = load_final(model_dir)
    if not isinstance(model, TextRepresentationModel):
        raise ValueError(f"{model_dir}: a TRM final/ is needed (its idf prior orders the tokens), got {info['kind']}")
    prior = model.head.token_prior.float()
    if torch.all(prior == prior[0]):
        raise ValueError(f"{model_dir}: the TRM has no idf prior to order tokens by (train with "
                         "train.sparse_prior=idf)")
    bands = band_ids(prior, list(model.head.special_ids), band)
    torch.manual_seed(seed)
    fresh = TextRepresentationModel(model.config, tuple(model.head.special_ids))
    row = {"model": str(model_dir), "band": band}
    for label, m in (("trained", model), ("random_init", fresh)):
        table = m.encoder.embeddings.word_embeddings.weight.detach()
        for name, ids in bands.items():
            row[f"{label}_{name}"] = mean_pairwise_cosine(table[ids])
    return row


def format_rows(rows: list[dict]) -> str:
    head = ["model"] + [f"{b} (random init)" for b in BANDS]
    lines = [f"## mean pairwise cosine of token embeddings, bands of {rows[0]['band']} tokens by training frequency",
             "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * len(BANDS)]
    for row in rows:
        cells = [f"{row[f'trained_{b}']:.3f} ({row[f'random_init_{b}']:.3f})" for b in BANDS]
        lines.append("| " + " | ".join([row["model"], *cells]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/token_geometry.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="TRM final/ directories trained with an idf prior")
    parser.add_argument("--band", type=int, default=1000, help="tokens per band (default 1000)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/token_geometry.json"),
                        help="JSON written after every model")
    args = parser.parse_args(argv)
    if args.band < 2:
        parser.error("--band must be >= 2")
    report = LiveReport(args.out, {"bench": "token_geometry"})
    return report_rows(report, args.models, lambda model_dir: geometry(model_dir, args.band), format_rows)


if __name__ == "__main__":
    sys.exit(main())
