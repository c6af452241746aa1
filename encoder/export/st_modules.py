"""sentence-transformers modules of the TRM and reranker exports.

    LongEncTransformer    the input module: sentence-transformers' Transformer, with lone surrogates replaced by
                          U+FFFD before tokenising (text_input.py), as our own inference API does
    LongEncSparsePooling  the sparse (lexical) output of a TRM

Shipped as `sentence_longenc.py` next to `modeling_longenc.py` (bundle.py pastes text_input.py into the same
file and rewrites the other package imports below to `from .modeling_longenc import ...`). The sparse module
follows the module contract exactly: `config_keys` + `get_config_dict`, `save` writes `config.json` +
`model.safetensors` into the module folder, `load` reads them back; dimensions are known at construction (vocab
size), never discovered at the first forward.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules import Module, Transformer
from torch import Tensor

from ..batch import unpad
from ..config import ModelConfig
from ..heads import TRMHead, fit_sparse_statistics
from .text_input import clean_inputs, clean_text


class LongEncTransformer(Transformer):
    """The Transformer input module, minus the tokenizer's TypeError on a lone surrogate (what Python gives for
    an undecodable byte): every text, and both sides of a CrossEncoder pair, is cleaned first."""

    def preprocess(self, inputs, *args, **kwargs) -> dict[str, Any]:
        if isinstance(kwargs.get("prompt"), str):
            kwargs["prompt"] = clean_text(kwargs["prompt"])
        return super().preprocess(clean_inputs(inputs), *args, **kwargs)


class LongEncSparsePooling(Module):
    """token_embeddings `[B, L, H]` -> sentence_embedding `[B, vocab]`: ReLU(linear) x prior per token, max over
    repeated ids (scaled like a BM25 term when tf_k1 > 0), special tokens dropped (our `TRMHead.sparse_weights`
    on the unpadded tokens)."""

    config_keys = ["hidden_size", "vocab_size", "special_token_ids", "tf_k1", "length_b"]

    def __init__(self, hidden_size: int, vocab_size: int, special_token_ids: list[int], tf_k1: float = 0.0,
                 length_b: float = 0.75) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.special_token_ids = list(special_token_ids)
        self.tf_k1, self.length_b = tf_k1, length_b
        config = ModelConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_heads=1, num_layers=1,
                             sparse_tf_k1=tf_k1, sparse_length_b=length_b)
        self.head = TRMHead(config, tuple(self.special_token_ids))

    @property
    def sparse_linear(self) -> torch.nn.Linear:
        return self.head.sparse_linear

    def forward(self, features: dict[str, Tensor | Any], **kwargs) -> dict[str, Tensor | Any]:
        batch, info = unpad(features["input_ids"], features["attention_mask"])
        hidden = features["token_embeddings"].flatten(0, 1)[info.indices]  # [T, H]
        sparse = self.head.sparse_weights(hidden, batch)
        embedding = hidden.new_zeros(batch.num_sequences, self.vocab_size)
        embedding[sparse.sequence_index, sparse.token_ids] = sparse.weights.to(embedding.dtype)
        features["sentence_embedding"] = embedding  # SparseEncoder turns it into a sparse tensor
        return features

    def fit_sparse_statistics(self, documents: list[list[int]]) -> None:
        """Score with the idf prior and mean length of `documents` (the collection you search, as token ids
        without special tokens) instead of the training documents' values, like `encoder.evaluate
        --sparse-statistics collection`."""
        fit_sparse_statistics(self.head, documents)

    def get_embedding_dimension(self) -> int:
        return self.vocab_size

    def get_sentence_embedding_dimension(self) -> int:  # older sentence-transformers name
        return self.vocab_size

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        # the H+1 head weights, the token prior and mean length: the special-id buffer is rebuilt from the config
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs) -> LongEncSparsePooling:
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        module = cls(**cls.load_config(model_name_or_path, **hub))
        cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module
