"""Shared fixtures: a small multilingual tokenizer trained once per session on Django's catalogs."""

from __future__ import annotations

from pathlib import Path

import pytest
from prep_helpers import django_texts

from data_prep.tokenizer import save_hf_tokenizer, train_sentencepiece


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    spm_path = train_sentencepiece(django_texts(every=2, offset=0), out / "spm", vocab_size=3000)
    return save_hf_tokenizer(spm_path, out / "hf")
