"""The contrastive loss of a TRM on its training batches, term by term, before any update.

    python bench/loss_terms.py runs/small/trm_cpt/run/final --config configs/tiny_trm_ft.yaml \
        data.pairs=runs/small/data/corpus/pairs/train.jsonl loss.matryoshka_step=64 [loss.sparse_temperature=1.0]

For the first `--batches` steps of the trainer's own batch order (encoder.pair_batching: one source per batch,
`data.batch_size` queries, in-batch negatives, known false negatives masked), every loss term (each Matryoshka
width, the sparse term) is reported with its InfoNCE value beside chance (ln of the documents a query ranks) and
the gradient norm that term alone gives the model. This shows which source and which term would drive the
first updates. A term far above chance is confidently wrong (for the sparse term, usually a temperature that
turns a one-token score gap into many nats). A source whose gradient is many times the others' dominates the
updates. The model's own architecture comes from its final/ directory, and the config gives the data and loss
sections. Hard negatives are not mined here.
Prints a table and writes the JSON (--out).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from live_report import LiveReport  # noqa: E402

from encoder.artifacts import load_final  # noqa: E402
from encoder.batch import UnpaddedBatch  # noqa: E402
from encoder.config import load_config  # noqa: E402
from encoder.losses import build_output_losses, global_pair_loss, select_rows  # noqa: E402
from encoder.pair_batching import PairBatches, load_records  # noqa: E402
from encoder.train_contrastive import TRMRunConfig, false_negative_mask  # noqa: E402


def probe(model_dir: Path, config_path: str, overrides: list[str], batches: int) -> dict:
    model, tokenizer, _ = load_final(model_dir)
    config = load_config(TRMRunConfig, config_path, [f"data.tokenizer={model_dir / 'tokenizer'}", *overrides])
    data_config = replace(config.data, num_hard_negatives=0, negatives_from="", long_pairs="")
    cpu = torch.device("cpu")
    data = PairBatches(load_records(data_config, cpu), tokenizer, data_config, config.train.seed)
    outputs = build_output_losses(config.loss, model.config.hidden_size)
    model.train()
    rows = []
    for step in range(batches):
        batch = data.batch(step)
        n = len(batch.queries)
        torch.manual_seed(config.train.seed + step)  # the same dropout masks in every probe of a step
        rep = model(UnpaddedBatch.from_sequences(batch.queries + batch.positives))
        queries, docs = select_rows(rep, torch.arange(n)), select_rows(rep, torch.arange(n, 2 * n))
        mask = false_negative_mask(batch, cpu, gather=False)
        row_masks = {"sparse": batch.lexical_overlap} if config.loss.sparse_lexical_rows_only else None
        terms = {}
        for output in outputs:
            model.zero_grad(set_to_none=True)
            result = global_pair_loss(queries, docs, None, [output], gather=False, mask=mask, row_masks=row_masks)
            result.loss.backward(retain_graph=True)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            terms[output.name] = {"loss": float(result.parts[output.name]), "grad_norm": float(norm),
                                  "weight": output.weight, "temperature": output.temperature}
        # chance: a uniform ranking of the documents left after masking, averaged over the queries
        left = (~mask[:, :n]).sum(dim=1).clamp(min=1).float()
        rows.append({"step": step, "source": data.sampler.names[data.sampler.group_at(step)], "queries": n,
                     "chance": float(torch.log(left).mean()), "terms": terms})
    return {"model": str(model_dir), "config": config_path, "overrides": overrides, "rows": rows}


def format_probe(result: dict) -> str:
    names = list(result["rows"][0]["terms"]) if result["rows"] else []
    head = ["step", "source", "chance"] + [f"{n} loss" for n in names] + [f"{n} grad" for n in names]
    lines = [f"## {result['model']} ({' '.join(result['overrides'])})", "", "| " + " | ".join(head) + " |",
             "|---:|---|" + "---:|" * (len(head) - 2)]
    for row in result["rows"]:
        cells = [str(row["step"]), row["source"], f"{row['chance']:.2f}"]
        cells += [f"{row['terms'][n]['loss']:.2f}" for n in names]
        cells += [f"{row['terms'][n]['grad_norm']:.1f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/loss_terms.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a TRM final/ directory (e.g. the contrastive pre-training's)")
    parser.add_argument("--config", required=True, help="a TRM training YAML (its data and loss sections)")
    parser.add_argument("overrides", nargs="*",
                        help="section.key=value, e.g. data.pairs=PATH loss.sparse_temperature=1.0")
    parser.add_argument("--batches", type=int, default=6, help="steps of the batch order to probe (default 6)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/loss_terms.json"), help="JSON written at the end")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.batches < 1:
        parser.error("--batches must be >= 1")
    report = LiveReport(args.out, {"bench": "loss_terms"}, sections=("probes",))
    result = probe(args.model, args.config, args.overrides, args.batches)
    print(format_probe(result))
    report.add("probes", result)
    report.finish()
    return 0 if all(math.isfinite(t["loss"]) for r in result["rows"] for t in r["terms"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
