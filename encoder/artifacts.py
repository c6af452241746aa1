"""Trained-model artifacts: where a training run leaves its weights, and how everything else reads them.

Three formats (docs/architecture.md has the full picture):

    checkpoint directory   `ckpt-NNNNNN/` in a run directory (encoder.checkpoint): weights + optimizer, RNG and
                           data state; written by every trainer, read by resume, `--init-from` and `load_mlm`
    final/                 a retrieval model ready for inference (this module): model.pt, model.yaml (the model
                           config *for inference*), inference.json (kind, special ids, ...), tokenizer/,
                           manifest.json (sha256 of every file); written by the TRM and reranker trainers, read by
                           evaluation, long-document evaluation, hard-negative mining, the pipeline and export
    export directory       Hugging Face `save_pretrained` layout (encoder.export)

A `final/` is sealed like a checkpoint: written under a temporary name with a manifest, then renamed, and
verified when loaded, so a damaged `model.pt` is refused instead of loading changed weights. No module outside
the trainers imports a trainer: they all load through here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from data_prep.tokenizer import load_tokenizer

from .checkpoint import (
    MANIFEST,
    CheckpointError,
    load_state_file,
    resolve_checkpoint,
    seal_directory,
    temporary_sibling,
    verify_directory,
)
from .config import ModelConfig, load_config, save_config
from .heads import MaskedLM, Reranker, TextRepresentationModel

FINAL_FORMAT = "longenc-final/1"
FINAL_KINDS = ("trm", "reranker")


def is_final(path: str | Path) -> bool:
    return (Path(path) / "inference.json").is_file()


def inference_model_config(model_config: ModelConfig, revntk_factor: float) -> ModelConfig:
    """revNTK: trained at base θ/f; served with (θ/f, NTK f), which restores θ's long-context behaviour."""
    if revntk_factor == 1.0:
        return model_config
    return replace(model_config, rope_theta=model_config.rope_theta / revntk_factor, rope_ntk_factor=revntk_factor)


def save_final(directory: str | Path, model: nn.Module, model_config: ModelConfig, tokenizer_dir: str | Path,
               info: dict[str, Any]) -> Path:
    """`final/`: weights, inference model config, tokenizer copy and what kind of model it is, sealed."""
    if info.get("kind") not in FINAL_KINDS:
        raise ValueError(f"info.kind: expected one of {FINAL_KINDS}, got {info.get('kind')!r}")
    directory = Path(directory)
    tmp = temporary_sibling(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        save_config(model_config, tmp / "model.yaml")
        (tmp / "inference.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        seal_directory(tmp, directory, FINAL_FORMAT, kind=info["kind"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_final(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, Any, dict]:
    """(model in eval mode, tokenizer, info) from a `final/` directory, every file checked against the manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such final/ directory")
    verify_directory(directory, FINAL_FORMAT)
    info = json.loads((directory / "inference.json").read_text(encoding="utf-8"))
    model_config = load_config(ModelConfig, directory / "model.yaml")
    if info.get("kind") == "trm":
        model: nn.Module = TextRepresentationModel(model_config, tuple(info["special_token_ids"]))
    elif info.get("kind") == "reranker":
        if "pooling" not in info:  # written before the reranker honoured model.pooling: it read the CLS state
            model_config = replace(model_config, pooling="cls")
        model = Reranker(model_config, use_pooler=info.get("use_pooler", True))
    else:
        raise CheckpointError(f"{directory / 'inference.json'}: unknown kind {info.get('kind')!r}")
    model.load_state_dict(load_state_file(directory / "model.pt", map_location))
    return model.eval(), load_tokenizer(directory / "tokenizer"), info


def weights_file(source: str | Path) -> Path:
    """The `model.pt` of a `final/` directory, a checkpoint, or a run directory's newest checkpoint (verified)."""
    path = Path(source)
    if is_final(path):
        verify_directory(path, FINAL_FORMAT)
        return path / "model.pt"
    return resolve_checkpoint(path) / "model.pt"


def load_weights(source: str | Path) -> dict[str, Tensor]:
    return load_state_file(weights_file(source))


def _widen_token_types(encoder_state: dict[str, torch.Tensor], encoder: nn.Module) -> None:
    """A model with more token types than its source (a reranker that marks matched tokens, started from an MLM
    or TRM with one type): the new rows start as copies of row 0, so the loaded model computes exactly what the
    source did until training moves them apart."""
    key = "embeddings.token_type_embeddings.weight"
    own = encoder.state_dict().get(key)
    loaded = encoder_state.get(key)
    if own is None or loaded is None or loaded.shape[0] >= own.shape[0] or loaded.shape[1:] != own.shape[1:]:
        return
    extra = loaded[:1].expand(own.shape[0] - loaded.shape[0], -1)
    encoder_state[key] = torch.cat([loaded, extra])


def load_encoder_weights(model: nn.Module, source: str | Path) -> str:
    """Encoder weights from a checkpoint / run dir or a `final/` dir into a model with `.encoder` and `.head`;
    the head keeps its fresh init unless the source has the same kind of head. Returns what was loaded."""
    weights = weights_file(source)
    state = load_state_file(weights)
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder_state:
        raise CheckpointError(f"{weights}: no encoder.* weights")
    _widen_token_types(encoder_state, model.encoder)
    model.encoder.load_state_dict(encoder_state)  # strict: a shape or name mismatch names the key
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    own = model.head.state_dict()
    # buffers a head fills with a neutral default when a checkpoint predates them (TRMHead: prior, mean length)
    optional = set(getattr(model.head, "defaulted_keys", ()))
    same_kind = bool(head_state) and set(head_state) <= set(own) and set(own) - set(head_state) <= optional
    if same_kind and all(v.shape == own[k].shape for k, v in head_state.items()):
        model.head.load_state_dict(head_state)
        return f"{weights} (encoder + head)"
    return f"{weights} (encoder; head freshly initialised)"


def load_mlm(run_dir: str | Path) -> MaskedLM:
    """The MaskedLM of an MLM run directory's newest complete checkpoint (its config.yaml gives the shape)."""
    run_dir = Path(run_dir)
    config = load_config(ModelConfig, run_dir / "config.yaml", section="model")
    model = MaskedLM(config)
    model.load_state_dict(load_weights(run_dir))
    return model.eval()


__all__ = ["FINAL_FORMAT", "MANIFEST", "inference_model_config", "is_final", "load_encoder_weights", "load_final",
           "load_mlm", "load_weights", "save_final", "weights_file"]
