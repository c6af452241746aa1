"""Session fixtures: a tiny tokenizer and token shards built once, with data_prep, from Django's catalogs."""

from __future__ import annotations

import json
from pathlib import Path

import django
import polib
import pytest

from data_prep.corpus import CorpusSource, ShardConfig, build_shards
from data_prep.tokenizer import save_hf_tokenizer, train_sentencepiece

LANGS = ("de", "fr", "ru", "es", "zh_Hans")
VOCAB = 2000  # sentencepiece pieces (Chinese needs ~1k characters); + 2 ids, padded to a multiple of 64


def _documents(lang: str, per_doc: int = 12) -> list[str]:
    """Translated messages of one language, grouped into short multi-line documents."""
    root = Path(django.__file__).parent
    lines = []
    for po in sorted(root.glob(f"**/locale/{lang}/LC_MESSAGES/django.po")):
        lines += [e.msgstr for e in polib.pofile(str(po)) if e.msgstr and not e.fuzzy]
    return ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]


@pytest.fixture(scope="session")
def mlm_shards(tmp_path_factory) -> dict:
    """{"shards": dir, "vocab_size": padded model vocabulary} for the tiny MLM runs."""
    root = tmp_path_factory.mktemp("mlm_data")
    sources, texts = [], []
    for lang in LANGS:
        docs = _documents(lang)
        texts += docs
        path = root / f"{lang}.jsonl"
        path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        sources.append(CorpusSource(lang=lang, path=str(path)))
    spm_path = train_sentencepiece(texts, root / "spm", vocab_size=VOCAB)
    tokenizer_dir = save_hf_tokenizer(spm_path, root / "tokenizer")
    manifest = build_shards(sources, tokenizer_dir, root / "shards", ShardConfig(max_length=256), progress=False)
    return {"shards": str(root / "shards"), "vocab_size": manifest["tokenizer"]["padded_vocab_size"],
            "tokens": manifest["totals"]["tokens"]}
