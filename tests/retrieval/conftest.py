"""Session fixtures of the retrieval tests: embedded data + tokenizer built once."""

from __future__ import annotations

import pytest
from retrieval_helpers import build_data_and_tokenizer


@pytest.fixture(scope="session")
def retrieval_assets(tmp_path_factory):
    return build_data_and_tokenizer(tmp_path_factory.mktemp("retrieval"))


@pytest.fixture(scope="session")
def retrieval_tokenizer(retrieval_assets):
    from data_prep.tokenizer import load_tokenizer

    return load_tokenizer(retrieval_assets[1])
