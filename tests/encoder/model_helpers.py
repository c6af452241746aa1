"""Small builders shared by the encoder tests."""

from __future__ import annotations

import torch

from encoder.batch import UnpaddedBatch
from encoder.config import ModelConfig, load_config

ROOT_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


def tiny_config(**overrides) -> ModelConfig:
    config = load_config(ModelConfig, ROOT_CONFIGS / "tiny.yaml", section="model")
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    return config


def random_batch(lengths: list[int], vocab_size: int, seed: int = 0, device: str = "cpu") -> UnpaddedBatch:
    generator = torch.Generator().manual_seed(seed)
    sequences = [torch.randint(4, vocab_size, (n,), generator=generator).tolist() for n in lengths]
    return UnpaddedBatch.from_sequences(sequences, device=device)
