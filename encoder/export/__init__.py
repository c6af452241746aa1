"""Hugging Face export (transformers + sentence-transformers, hub upload) and mGTE checkpoint import/export.

    export_pretrained(model, "out/trm", tokenizer_dir)    # save_pretrained directory with generated remote code
    load_mgte("gte-multilingual-base/")                  # released new-impl checkpoint -> our model
    save_mgte(model, "out/new-impl")                     # our model -> new-impl layout

CLI: `python -m encoder.export --help`.
"""

from .hf import export_pretrained, model_kind
from .mgte import load_mgte, save_mgte

__all__ = ["export_pretrained", "load_mgte", "model_kind", "save_mgte"]
