from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_prep.tokenizer import special_ids
from encoder.artifacts import save_final
from encoder.config import ModelConfig
from encoder.heads import TextRepresentationModel


@pytest.fixture
def tiny_trm_final(tiny_assets, tiny_tokenizer, tmp_path) -> Path:
    """A randomly initialised one-layer TRM (seed 0) saved as a final/ directory with the tiny tokenizer."""
    special = special_ids(tiny_tokenizer)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=special.padded_vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                         intermediate_size=64, max_position_embeddings=256, attention_backend="reference")
    return save_final(tmp_path / "final", TextRepresentationModel(config, special.all_special), config,
                      tiny_assets.tokenizer_dir, {"kind": "trm", "special_token_ids": list(special.all_special)})
