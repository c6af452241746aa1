"""The main job's report: one markdown file with the evaluation tables and PNG plots beside it."""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .training import read_metrics

TRAINING_STAGES = ("mlm_stage1", "mlm_stage2", "trm_cpt", "trm_ft", "reranker")


def plot_curves(records: dict[str, dict], path: Path, key: str = "loss", stages: tuple[str, ...] = TRAINING_STAGES,
                ylabel: str = "training loss") -> Path | None:
    """One panel per training stage: `key` of its metrics.jsonl against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for stage in stages:
        metrics = Path(records[stage]["outputs"]["run_dir"]) / "metrics.jsonl" if stage in records else None
        rows = [r for r in read_metrics(metrics) if key in r and "step" in r] if metrics and metrics.is_file() else []
        if rows:
            curves[stage] = rows
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], curves.items()):
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mlm_section(path: Path) -> str:
    """Masked-token accuracy of each MLM stage on unseen text (encoder.mlm_eval), one row per text set."""
    scores = json.loads(path.read_text(encoding="utf-8"))
    lines = ["## MLM: masked-token accuracy on text no stage trained on", "",
             "15% of the tokens masked (80/10/10) at a fixed seed, texts cut to 512 tokens; `in-domain` = the "
             "eval's test queries and their relevant documents (held-out units), `<source>/mono-<lang>` = the "
             "held-out domain's documents.", "",
             "| text | masked tokens | stage 1 accuracy | stage 2 accuracy | stage 2 loss |",
             "|---|---:|---:|---:|---:|"]
    for name, by_stage in scores.items():
        one, two = by_stage.get("mlm_stage1", {}), by_stage.get("mlm_stage2", {})
        lines.append(f"| {name} | {two.get('masked', '-')} | {one.get('accuracy', float('nan')):.3f} | "
                     f"{two.get('accuracy', float('nan')):.3f} | {two.get('loss', float('nan')):.3f} |")
    return "\n".join(lines)


def _stage_table(records: dict[str, dict]) -> str:
    lines = ["| stage | seconds | key outputs |", "|---|---:|---|"]
    total = 0.0
    for name, record in records.items():
        if name == "report":
            continue
        total += record["seconds"]
        interesting = {k: v for k, v in record["outputs"].items()
                       if k in ("loss", "accuracy", "steps", "tokens", "vocab_size", "gamma", "languages")}
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in interesting.items())
        lines.append(f"| {name} | {record['seconds']:.0f} | {shown} |")
    lines.append(f"| **total** | **{total:.0f}** | |")
    return "\n".join(lines)


def write_report(records: dict[str, dict], workdir: Path, directory: Path) -> Path:
    """`report.md` (and its PNGs) in `directory` from the pipeline's stage records (stage -> {"outputs": ...})."""

    def out(stage: str, key: str) -> Any:
        return records[stage]["outputs"][key]

    directory.mkdir(parents=True, exist_ok=True)
    sections = [f"# longenc main job report\n\nWritten {time.strftime('%Y-%m-%d %H:%M:%S')} on "
                f"{platform.machine()} ({torch.get_num_threads()} threads, torch {torch.__version__}); "
                f"work directory `{workdir}`."]
    data = records["data"]["outputs"]
    sections.append(f"## Data\n\nSource: {data['source']} ({data['root']}); "
                    f"{data.get('languages', len(data['mlm']))} languages"
                    + (f", scripts {', '.join(data['scripts'])}" if data.get("scripts") else "")
                    + f". Tokenizer vocabulary {out('tokenizer', 'vocab_size')} "
                    f"(model {out('tokenizer', 'padded_vocab_size')}); "
                    f"{out('shards', 'tokens'):,} MLM tokens in shards.")
    sections.append("## Stages\n\n" + _stage_table(records))
    results_md = Path(out("evaluate", "results_md"))
    results = json.loads(Path(out("evaluate", "results_json")).read_text(encoding="utf-8"))
    sections.append("## Retrieval evaluation, in-domain (test queries of the training sources' held-out units)\n\n"
                    f"{results['queries']} test queries over {results['corpus']} documents; hybrid = "
                    f"(1-γ)·dense + γ·sparse over per-query z-normalised scores, γ = {results.get('gamma')} chosen on "
                    "the dev split. Rows prefixed `untrained` are a randomly initialised model of the same shape."
                    "\n\n" + results_md.read_text(encoding="utf-8"))
    heldout = records["evaluate"]["outputs"].get("heldout", {})
    if heldout:
        sections.append(heldout_section(heldout))
    mlm_json = records["evaluate"]["outputs"].get("mlm_accuracy")
    if mlm_json and Path(mlm_json).is_file():
        sections.append(mlm_section(Path(mlm_json)))
    figures = []
    loss_png = plot_curves(records, directory / "loss_curves.png")
    if loss_png:
        figures.append(("Training loss", loss_png.name))
    accuracy_png = plot_curves(records, directory / "mlm_accuracy.png", "accuracy", ("mlm_stage1", "mlm_stage2"),
                               "masked-token accuracy (training batches)")
    if accuracy_png:
        figures.append(("MLM accuracy on training batches", accuracy_png.name))
    matryoshka = Path(out("evaluate", "matryoshka_png"))
    if matryoshka.is_file():
        shutil.copy(matryoshka, directory / "matryoshka.png")
        figures.append(("Matryoshka: nDCG@10 by embedding dimension", "matryoshka.png"))
    if "longdoc" in records:
        longdoc = records["longdoc"]["outputs"]
        table = Path(longdoc["table_md"]).read_text(encoding="utf-8") if longdoc.get("table_md") else ""
        sections.append("## Long documents: what 8192 tokens buy over 512\n\n" + table)
        for key, value in longdoc.items():
            if str(value).endswith(".png") and Path(value).is_file():
                shutil.copy(value, directory / Path(value).name)
                figures.append((f"Long documents: {key}", Path(value).name))
        for name, held in longdoc.get("heldout", {}).items():
            sections.append(f"### Held-out domain: {name} (whole pages; {held['queries']} test queries, "
                            f"{held['past512']} of them with the section past token 511)\n\n"
                            + Path(held["table_md"]).read_text(encoding="utf-8"))
            png = f"longdoc_{name.replace('/', '__')}.png"
            shutil.copy(held["heatmap_png"], directory / png)
            figures.append((f"Long documents, held-out domain {name}", png))
    if figures:
        sections.append("## Plots\n\n" + "\n\n".join(f"**{title}**\n\n![{title}]({name})" for title, name in figures))
    if "export" in records:
        exports = records["export"]["outputs"]
        sections.append("## Exports (Hugging Face, `trust_remote_code=True`)\n\n" + "\n".join(
            f"- {kind}: `{path}`" for kind, path in exports.items()))
    path = directory / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


HELDOUT_SYSTEMS = ("random", "bm25", "dense", "sparse", "hybrid")


def heldout_section(results_json: dict[str, str]) -> str:
    """One row per held-out-domain set (`<source>/mono-<lang>`: query and corpus in that language;
    `cross-<lang>`: query in that language, corpus in English): nDCG@10 of every system."""
    rows, verdicts = [], []
    results = {name: json.loads(Path(path).read_text(encoding="utf-8")) for name, path in sorted(results_json.items())}
    # a set the reranker did not re-order (pipeline heldout_rerank) shows "-" in the reranked column
    reranked = sorted({k for result in results.values() for k in result["results"] if "rerank" in k})
    header = ["set", "queries", "docs", *HELDOUT_SYSTEMS, *reranked, "γ"]
    for name, result in results.items():
        table = result["results"]
        cells = [f"{table[k]['all']['ndcg@10']:.3f}" if k in table else "-" for k in (*HELDOUT_SYSTEMS, *reranked)]
        rows.append(f"| {name} | {result['queries']} | {result['corpus']} | " + " | ".join(cells)
                    + f" | {result.get('gamma')} |")
        if "reranker_verdict" in result:
            verdicts.append(f"- {name}: {result['reranker_verdict']['text']}")
        for warning in result.get("diagnostics", {}).get("trained", {}).get("warnings", []):
            verdicts.append(f"- {name}: warning: {warning}")
    lines = ["## Retrieval evaluation, held-out domain (a source no training stage saw)", "",
             "nDCG@10 on the test split; `random` is the exact expectation of a random ranking; γ (the hybrid's "
             "sparse share) is tuned on each set's own dev split.", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1), *rows]
    if verdicts:
        lines += ["", *verdicts]
    return "\n".join(lines)
