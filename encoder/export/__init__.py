"""Hugging Face export (transformers + sentence-transformers, hub upload) and mGTE checkpoint import/export.

    export_pretrained(model, "out/trm", tokenizer_dir)    # save_pretrained directory with generated remote code
    load_mgte("gte-multilingual-base/")                  # released new-impl checkpoint -> our model
    save_mgte(model, "out/new-impl")                     # our model -> new-impl layout

CLI: `python -m encoder.export --help`.

The names are imported on first use: `encoder.inference` imports the light `encoder.export.text_input`, and
that must not pull in transformers and sentence-transformers (seconds of import time) through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"export_pretrained": ".hf", "model_kind": ".hf", "load_mgte": ".mgte", "save_mgte": ".mgte"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
