"""Builders shared by the retrieval tests: the embedded data, a tokenizer trained on it, tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def build_data_and_tokenizer(out: Path, vocab_size: int = 4000):
    """The tiny embedded set (pairs + BEIR eval) and a sentencepiece tokenizer trained on its MLM texts."""
    from data_prep.embedded import build_embedded
    from data_prep.tokenizer import save_hf_tokenizer, train_sentencepiece

    data = build_embedded(out / "embedded", size="tiny")
    texts = [json.loads(line)["text"] for path in data.mlm_files.values()
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    spm_path = train_sentencepiece(texts, out / "tokenizer" / "spm", vocab_size=vocab_size)
    return data, save_hf_tokenizer(spm_path, out / "tokenizer" / "hf")
