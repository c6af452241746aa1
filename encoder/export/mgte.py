"""Import and export of the published mGTE checkpoints (Alibaba-NLP "new-impl" layout, `model_type: new`).

    model = load_mgte("path/to/gte-multilingual-base")       # -> TextRepresentationModel (or MaskedLM, Reranker)
    save_mgte(model, "out/")                                  # -> config.json + model.safetensors, new-impl layout

Key names follow the spec's table (docs/spec "Checkpoint layout of the published base encoder"); the mapping is an
explicit per-key table built from the config, so an unknown or missing key is an error that names the key, never a
silently re-initialised weight. The token-type row is kept as is (type_vocab_size 1: our Encoder adds row 0 to every
token exactly as NewModel does), so the import is exact rather than folded.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import ModelConfig
from ..heads import MaskedLM, Reranker, TextRepresentationModel
from ..model import Encoder
from .files import atomic_directory, save_tensors, write_json

ACTS_FROM_MGTE = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu",
                  "swish": "silu"}
ARCHITECTURES = {"mlm": "NewForMaskedLM", "trm": "NewForTokenClassification",
                 "reranker": "NewForSequenceClassification", "encoder": "NewModel"}
NEW_IMPL_AUTO_MAP = {
    "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
    "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
    "AutoModelForMaskedLM": "Alibaba-NLP/new-impl--modeling.NewForMaskedLM",
    "AutoModelForSequenceClassification": "Alibaba-NLP/new-impl--modeling.NewForSequenceClassification",
    "AutoModelForTokenClassification": "Alibaba-NLP/new-impl--modeling.NewForTokenClassification",
}
MODEL_TYPE = "new"  # what the released new-impl configs declare; anything else is another architecture
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# derived buffers some versions of the released code persist; never weights
IGNORED_SUFFIXES = ("inv_freq", "cos_cached", "sin_cached", "position_ids")

TaskModel = MaskedLM | TextRepresentationModel | Reranker | Encoder


# ---- configuration ---------------------------------------------------------------------------------------------
def _rope_from_mgte(cfg: dict[str, Any]) -> tuple[float, float]:
    """(theta, fixed NTK factor) from `rope_theta` + `rope_scaling` (or transformers 5's `rope_parameters`)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = scaling.get("type") or scaling.get("rope_type") or "default"
    if kind in ("default", None) or not scaling.get("factor"):
        return theta, 1.0
    if kind != "ntk" or scaling.get("mixed_b"):
        raise ValueError(f"rope_scaling: {scaling} is not supported (only the fixed 'ntk' variant mGTE ships)")
    return theta, float(scaling["factor"])


def model_config_from_mgte(cfg: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig from a new-impl config.json (rejects the options our Encoder does not implement)."""
    unsupported = {"layer_norm_type": "layer_norm", "pack_qkv": True, "position_embedding_type": "rope",
                   "logn_attention_scale": False}
    for key, expected in unsupported.items():
        if key in cfg and cfg[key] != expected:
            raise ValueError(f"{key}: {cfg[key]!r} is not supported (expected {expected!r})")
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTS_FROM_MGTE:
        raise ValueError(f"hidden_act: {act!r} is not supported (known: {sorted(ACTS_FROM_MGTE)})")
    theta, ntk = _rope_from_mgte(cfg)
    return ModelConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                       num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                       intermediate_size=cfg["intermediate_size"], hidden_act=ACTS_FROM_MGTE[act],
                       max_position_embeddings=cfg.get("max_position_embeddings", 8192),
                       type_vocab_size=cfg.get("type_vocab_size", 1), rope_theta=theta, rope_ntk_factor=ntk,
                       norm_position="post", layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
                       hidden_dropout=cfg.get("hidden_dropout_prob", 0.1), qkv_bias=True,
                       pad_token_id=cfg.get("pad_token_id", 1), initializer_range=cfg.get("initializer_range", 0.02))


def mgte_config_from_model_config(config: ModelConfig, kind: str) -> dict[str, Any]:
    if config.norm_position != "post" or not config.qkv_bias:
        raise ValueError("model: only post-LN models with a QKV bias have a new-impl layout")
    if kind in ("trm", "reranker") and config.pooling != "cls":
        raise ValueError(f"model.pooling: the new-impl {kind} reads the CLS state; this model pools by "
                         f"{config.pooling}")
    acts = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu"}
    cfg = {"architectures": [ARCHITECTURES[kind]], "auto_map": NEW_IMPL_AUTO_MAP, "model_type": "new",
           "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
           "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
           "intermediate_size": config.intermediate_size, "hidden_act": acts[config.hidden_act],
           "hidden_dropout_prob": config.hidden_dropout, "attention_probs_dropout_prob": 0.0,
           "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": config.type_vocab_size,
           "initializer_range": config.initializer_range, "layer_norm_eps": config.layer_norm_eps,
           "layer_norm_type": "layer_norm", "pack_qkv": True, "position_embedding_type": "rope",
           "rope_theta": config.rope_theta, "rope_scaling": None, "logn_attention_scale": False,
           "pad_token_id": config.pad_token_id, "unpad_inputs": False, "use_memory_efficient_attention": False}
    if config.rope_ntk_factor != 1.0:
        cfg["rope_scaling"] = {"type": "ntk", "factor": config.rope_ntk_factor}
    if kind in ("trm", "reranker"):
        cfg.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return cfg


# ---- state dict ------------------------------------------------------------------------------------------------
def key_table(config: ModelConfig, kind: str) -> dict[str, str]:
    """{our key: new-impl key} for a task model of `kind` (mlm, trm, reranker) or a bare `encoder`."""
    ours_prefix = "" if kind == "encoder" else "encoder."
    new_prefix = "" if kind == "encoder" else "new."
    body = {"embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight"}
    if config.type_vocab_size > 0:
        body["embeddings.token_type_embeddings.weight"] = "embeddings.token_type_embeddings.weight"
    for p in ("weight", "bias"):
        body[f"embeddings.norm.{p}"] = f"embeddings.LayerNorm.{p}"
        for i in range(config.num_layers):
            ours, new = f"layers.{i}.", f"encoder.layer.{i}."
            body[f"{ours}attn.qkv_proj.{p}"] = f"{new}attention.qkv_proj.{p}"
            body[f"{ours}attn.o_proj.{p}"] = f"{new}attention.o_proj.{p}"
            body[f"{ours}attn_norm.{p}"] = f"{new}attn_ln.{p}"
            body[f"{ours}mlp.down_proj.{p}"] = f"{new}mlp.down_proj.{p}"
            body[f"{ours}mlp_norm.{p}"] = f"{new}mlp_ln.{p}"
    for i in range(config.num_layers):  # up_gate has no bias; first I rows = up, last I = gate, as ours
        body[f"layers.{i}.mlp.up_gate_proj.weight"] = f"encoder.layer.{i}.mlp.up_gate_proj.weight"
    table = {ours_prefix + k: new_prefix + v for k, v in body.items()}
    for p in ("weight", "bias"):
        if kind == "mlm":
            table[f"head.dense.{p}"] = f"lm_head.dense.{p}"
            table[f"head.norm.{p}"] = f"lm_head.norm.{p}"
        elif kind == "trm":
            table[f"head.sparse_linear.{p}"] = f"classifier.{p}"
        elif kind == "reranker":
            table[f"head.pooler.{p}"] = f"new.pooler.dense.{p}"
            table[f"head.classifier.{p}"] = f"classifier.{p}"
    if kind == "mlm":
        table["head.bias"] = "lm_head.decoder.bias"  # the decoder weight is tied to the word embeddings
    return table


def infer_kind(state_dict: dict[str, torch.Tensor]) -> str:
    keys = set(state_dict)
    if any(k.startswith("lm_head.") for k in keys):
        return "mlm"
    if "classifier.weight" in keys:
        return "reranker" if any("pooler.dense" in k for k in keys) else "trm"
    return "encoder"


def _normalise_source(state_dict: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Bare NewModel keys and `new.`-prefixed task keys both map onto the task layout."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(IGNORED_SUFFIXES) or key == "lm_head.decoder.weight":
            continue  # derived buffers; the tied decoder (checked against the embeddings by the caller)
        if key.startswith(("lm_head.", "classifier.")):
            out[key] = value
            continue
        body = key.removeprefix("new.")
        out[body if kind == "encoder" else "new." + body] = value
    return out


def state_dict_from_mgte(state_dict: dict[str, torch.Tensor], config: ModelConfig,
                         kind: str) -> dict[str, torch.Tensor]:
    """New-impl keys -> ours (strict: a missing or unknown key is an error naming it)."""
    source = _normalise_source(state_dict, kind)
    table = key_table(config, kind)
    missing = [new for new in table.values() if new not in source]
    unknown = sorted(set(source) - set(table.values()))
    if missing or unknown:
        raise ValueError(f"mGTE checkpoint ({kind}): missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                         f"unexpected keys {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
    decoder = state_dict.get("lm_head.decoder.weight")
    embeddings = source[table["encoder.embeddings.word_embeddings.weight" if kind != "encoder"
                              else "embeddings.word_embeddings.weight"]]
    if decoder is not None and not torch.equal(decoder, embeddings):
        raise ValueError("lm_head.decoder.weight: differs from the word embeddings, but our MLM head is tied")
    return {ours: source[new] for ours, new in table.items()}


def state_dict_to_mgte(model: TaskModel) -> dict[str, torch.Tensor]:
    kind = _kind_of(model)
    ours = model.state_dict()
    if kind == "trm" and not torch.all(ours["head.token_prior"] == 1):
        raise ValueError("head.token_prior: the new-impl layout has no per-token prior for the lexical weights")
    if kind == "mlm" and not model.config.tie_word_embeddings:
        raise ValueError("model.tie_word_embeddings: the new-impl layout ties the MLM decoder to the embeddings")
    if kind == "trm" and model.config.sparse_tf_k1 > 0:
        raise ValueError("model.sparse_tf_k1: the new-impl layout max-pools the lexical weights, without BM25's "
                         "term-frequency scaling")
    if kind == "reranker" and model.config.pair_match_types:
        raise ValueError("model.pair_match_types: the new-impl layout has no token types that mark the tokens a "
                         "query and its document share")
    return {new: ours[k] for k, new in key_table(_config_of(model), kind).items()}


# ---- files -----------------------------------------------------------------------------------------------------
def _kind_of(model: TaskModel) -> str:
    for kind, cls in (("mlm", MaskedLM), ("trm", TextRepresentationModel), ("reranker", Reranker),
                      ("encoder", Encoder)):
        if isinstance(model, cls):
            return kind
    raise TypeError(f"model: expected MaskedLM, TextRepresentationModel, Reranker or Encoder, got {type(model)}")


def _config_of(model: TaskModel) -> ModelConfig:
    return model.config


def read_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a local new-impl directory, checked to be one (errors name the file)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a local mGTE checkpoint directory)")
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{file}: model_type {cfg.get('model_type')!r} is not an mGTE new-impl checkpoint "
                         f"(expected {MODEL_TYPE!r})")
    missing = [name for name in REQUIRED_FIELDS if name not in cfg]
    if missing:
        raise ValueError(f"{file}: missing required field(s) {', '.join(missing)}")
    return cfg


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors (or pytorch_model.bin, loaded without pickle code) of a local new-impl directory."""
    path = Path(path)
    safetensors_file, torch_file = path / "model.safetensors", path / "pytorch_model.bin"
    if safetensors_file.is_file():
        try:
            return load_file(str(safetensors_file))
        except (SafetensorError, OSError) as err:  # truncated, empty, not safetensors at all
            raise ValueError(f"{safetensors_file}: not a readable safetensors file ({err})") from err
    if not torch_file.is_file():
        raise FileNotFoundError(f"{path}: neither model.safetensors nor pytorch_model.bin")
    try:
        weights = torch.load(torch_file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as err:
        # not torch's own message: it suggests weights_only=False, i.e. running the file's pickle code
        raise ValueError(f"{torch_file}: not a readable PyTorch state dict ({type(err).__name__})") from err
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{torch_file}: expected a state dict (names -> tensors), got {type(weights).__name__}")
    return weights


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json + model.safetensors (or pytorch_model.bin) of a local new-impl directory; the config is
    checked before the (large) weights are read."""
    return read_config(path), read_weights(path)


def load_mgte(path: str | Path, kind: str | None = None, special_token_ids: tuple[int, ...] = (0, 1, 2, 3)
              ) -> TaskModel:
    """Our task model from a published mGTE directory; `kind` (mlm, trm, reranker, encoder) defaults to what
    the weights contain. The sparse head drops `special_token_ids` (XLM-R <s> <pad> </s> <unk>, as mGTE does)."""
    cfg = read_config(path)
    try:
        config = model_config_from_mgte(cfg)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{Path(path) / 'config.json'}: {err}") from err
    weights = read_weights(path)
    kind = kind or infer_kind(weights)
    if kind == "mlm":
        model: TaskModel = MaskedLM(config)
    elif kind == "trm":
        model = TextRepresentationModel(config, special_token_ids)
    elif kind == "reranker":
        model = Reranker(config, use_pooler=any("pooler.dense" in k for k in weights))
    elif kind == "encoder":
        model = Encoder(config)
    else:
        raise ValueError(f"kind: expected mlm, trm, reranker or encoder, got {kind!r}")
    try:
        state = state_dict_from_mgte(weights, config, kind)
    except ValueError as err:  # missing or unknown keys: name the checkpoint they came from
        raise ValueError(f"{path}: {err}") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "head.decoder_weight"]  # tied to the embeddings, loaded with them
    if missing or unexpected:
        raise ValueError(f"load_mgte: missing {missing}, unexpected {unexpected}")
    return model.eval()


def save_mgte(model: TaskModel, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors in the new-impl layout (loadable with the released remote code)."""
    kind = _kind_of(model)
    cfg = mgte_config_from_model_config(_config_of(model), kind)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_json(tmp / "config.json", cfg)
        save_tensors(state_dict_to_mgte(model), tmp / "model.safetensors")
    return Path(out_dir)
