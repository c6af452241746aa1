"""Builders shared by the long-document tests: the tiny embedded data, its units and a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_assets(out: Path, vocab_size: int = 4000):
    """(embedded data, units, tokenizer directory) for the tiny embedded set."""
    from data_prep.embedded import build_embedded
    from data_prep.longdoc import load_units
    from data_prep.tokenizer import save_hf_tokenizer, train_sentencepiece

    data = build_embedded(out / "embedded", size="tiny")
    texts = [json.loads(line)["text"] for path in data.mlm_files.values()
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    spm_path = train_sentencepiece(texts, out / "tokenizer" / "spm", vocab_size=vocab_size)
    return data, load_units(data.root), save_hf_tokenizer(spm_path, out / "tokenizer" / "hf")
