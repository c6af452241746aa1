"""Session fixtures of the long-document tests: tiny embedded data, units, tokenizer, needle sets."""

from __future__ import annotations

import pytest
from longdoc_helpers import build_assets


@pytest.fixture(scope="session")
def longdoc_assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("longdoc"))


@pytest.fixture(scope="session")
def longdoc_tokenizer(longdoc_assets):
    from data_prep.tokenizer import load_tokenizer

    return load_tokenizer(longdoc_assets[2])


@pytest.fixture(scope="session")
def needle_sets(longdoc_assets, longdoc_tokenizer):
    """Every length bucket up to 8192 tokens, queries in other languages (the default eval)."""
    from data_prep.longdoc import build_longdoc_sets

    return build_longdoc_sets(longdoc_assets[1], longdoc_tokenizer, seed=0)
