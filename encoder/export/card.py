"""The model card (`README.md`) of an export: what it is, how to load it, how it was trained, how it scores."""

from __future__ import annotations

from typing import Any

import yaml

from ..config import ModelConfig, to_dict

PIPELINE_TAGS = {"mlm": "fill-mask", "trm": "sentence-similarity", "reranker": "text-ranking"}
TAGS = {"mlm": ["fill-mask"], "trm": ["sentence-transformers", "sentence-similarity", "sparse-encoder", "mteb"],
        "reranker": ["sentence-transformers", "cross-encoder", "text-ranking"]}
USAGE = {
    "mlm": """```python
from transformers import AutoModelForMaskedLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForMaskedLM.from_pretrained("{name}", trust_remote_code=True)
logits = model(**tokenizer(["Paris is the <mask> of France."], return_tensors="pt")).logits
```""",
    "trm": """```python
from sentence_transformers import SentenceTransformer, SparseEncoder

dense = SentenceTransformer("{name}", trust_remote_code=True, truncate_dim=None)  # e.g. truncate_dim=256
embeddings = dense.encode(["query text", "document text"])          # normalised {pooling} vectors
sparse = SparseEncoder("<local copy of {name}>/sparse", trust_remote_code=True)
weights = sparse.encode(["query text"])                             # token id -> max ReLU weight
```
`AutoModel` gives the token states (`last_hidden_state`, CLS in `pooler_output`); `AutoModelForTokenClassification`
gives the per-token sparse logits (before ReLU), as the released mGTE code does.""",
    "reranker": """```python
from sentence_transformers import CrossEncoder

reranker = CrossEncoder("{name}", trust_remote_code=True)
scores = reranker.predict([("query", "relevant passage"), ("query", "other passage")])  # raw logits
```""",
}


def _eval_table(eval_results: dict[str, dict[str, float]]) -> str:
    metrics = sorted({m for row in eval_results.values() for m in row})
    lines = ["| task | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for task, row in eval_results.items():
        cells = [f"{row[m]:.4g}" if isinstance(row.get(m), (int, float)) else str(row.get(m, "")) for m in metrics]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_card(kind: str, config: ModelConfig, name: str, training_config: dict[str, Any] | None,
                eval_results: dict[str, dict[str, float]] | None, has_tokenizer: bool, code_files: list[str]) -> str:
    front = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAGS[kind], "tags": TAGS[kind],
             "license": "apache-2.0"}
    arch = (f"{config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} heads, GLU "
            f"({config.hidden_act}) inner {config.intermediate_size}, {config.norm_position}-LN, RoPE theta "
            f"{config.rope_theta:g} (NTK x{config.rope_ntk_factor:g}), vocab {config.vocab_size}, "
            f"{config.max_position_embeddings} positions")
    parts = [f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n", f"# {name}\n",
             f"A long-context multilingual BERT-style encoder ({kind}) trained on unpadded packed batches.\n",
             f"**Architecture:** {arch}.\n",
             "## Usage\n", USAGE[kind].format(name=name, pooling=config.pooling.upper()) + "\n",
             "The modeling code ships with the weights (" + ", ".join(f"`{f}`" for f in code_files) + "): it runs "
             "on packed tokens with the best available attention backend (on GPU: the bundled Triton kernels where a "
             "GPU check has passed on that device, else FlashAttention / xFormers / PyTorch SDPA), and needs "
             "`trust_remote_code=True`.\n"]
    if not has_tokenizer:
        parts.append("_No tokenizer was exported with this model; sentence-transformers loading needs one._\n")
    parts.append("## Configuration\n\n```yaml\n" + yaml.safe_dump(to_dict(config), sort_keys=False) + "```\n")
    if training_config:
        parts.append("## Training\n\n```yaml\n" + yaml.safe_dump(training_config, sort_keys=False) + "```\n")
    if eval_results:
        parts.append("## Evaluation\n\n" + _eval_table(eval_results) + "\n")
    return "\n".join(parts)
