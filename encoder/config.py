"""Typed configuration: dataclasses loaded from YAML presets and overridable from the command line.

    cfg = load_config(ModelConfig, "configs/tiny.yaml", ["num_layers=4"])        # a flat section
    run = load_config(MLMRunConfig, "configs/mlm.yaml", ["model.num_layers=4"])  # nested sections

Unknown keys are rejected with the dotted name of the field, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


# ---- the encoder architecture ---------------------------------------------------------------------------
@dataclass
class ModelConfig:
    vocab_size: int = 250048  # XLM-R's 250,002 padded to a multiple of 64
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072  # GLU inner width (up and gate are each this wide)
    hidden_act: str = "gelu"  # GLU activation: gelu (exact erf: GeGLU), gelu_tanh, silu (SwiGLU)
    max_position_embeddings: int = 8192
    type_vocab_size: int = 1  # 0 = no token-type embedding
    rope_theta: float = 160000.0  # RoPE base
    rope_ntk_factor: float = 1.0  # fixed NTK scaling (mGTE "ntk" rope_scaling); 1 = off
    norm_position: str = "post"  # post (BERT/mGTE: LN after each residual) or pre
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1  # after embeddings, attention output and FFN output
    qkv_bias: bool = True
    pad_token_id: int = 1
    initializer_range: float = 0.02
    attention_backend: str = "auto"  # see encoder.attention: reference, sdpa, triton, flash, xformers, auto
    rope_impl: str = "auto"  # torch or triton (fused kernel); auto = triton on CUDA when importable
    glu_impl: str = "auto"  # the GLU activation*up product: torch or triton (fused fwd/bwd kernel); auto as above
    gradient_checkpointing: bool = False
    # one state per sequence, for the TRM's dense embedding and the reranker's classifier: "cls" (mGTE, BERT) or
    # "mean" over every token of the sequence, specials included (sentence-transformers' mean pooling). Small
    # models trained briefly generalise better with mean: see configs/pipeline_small.yaml for the measurement
    pooling: str = "cls"
    # the MLM decoder shares the input embedding table (BERT, XLM-R, mGTE). Untied, a token's input embedding
    # moves only where the token is read: with the tied softmax every step pushes all rare tokens' rows the same
    # way, and after a short MLM run the rare words a new domain is made of look alike (measured:
    # docs/small_preset.md). The untied decoder is an MLM-only parameter; the TRM and reranker never use it
    tie_word_embeddings: bool = True
    # the sparse head's weight of token t in a text: mGTE takes the max over t's occurrences (sparse_tf_k1 = 0).
    # With k1 > 0 it is scaled like a BM25 term, by tf (k1+1) / (tf + k1 (1 - b + b len / mean_len)): tf the
    # occurrences of t, len the text's non-special tokens, mean_len the training documents' mean (a head buffer
    # set with the idf prior; 0 = no length normalisation). A max-pooled binary match cannot see that a page
    # names its topic ten times, nor that a long page matches everything once (measured: docs/small_preset.md)
    sparse_tf_k1: float = 0.0
    sparse_length_b: float = 0.75
    # the sparse head's learned factor at init: "random" (a small random projection plus 1: each token starts at
    # its prior times 1 +- a few tenths) or "ones" (projection 0, bias 1: an untrained head is exactly the prior
    # times BM25's tf shape, and fine-tuning moves a token's weight only where the pairs say so)
    sparse_init: str = "random"
    # reranker input: token type 1 marks a query token whose id also occurs in the document and a document token
    # whose id occurs in the query (the query runs from the first token to the first `sep_token_id`). An exact-match
    # signal, as in DrQA's reader: a cross-encoder pre-trained briefly has no attention head that finds shared
    # tokens, and without one it stays at chance on its own training pairs (measured: docs/small_preset.md).
    # Needs type_vocab_size >= 2; the pair's ids alone decide the types, so every export computes the same
    pair_match_types: bool = False
    sep_token_id: int = 2  # XLM-R's </s>, between query and document in `<s> q </s></s> d </s>`

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name}: must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model.hidden_size: {self.hidden_size} is not divisible by "
                             f"model.num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"model.num_heads: head_dim {self.head_dim} must be even for RoPE")
        if self.norm_position not in ("post", "pre"):
            raise ValueError(f"model.norm_position: expected 'post' or 'pre', got {self.norm_position!r}")
        if self.hidden_act not in ("gelu", "gelu_tanh", "silu"):
            raise ValueError(f"model.hidden_act: expected gelu, gelu_tanh or silu, got {self.hidden_act!r}")
        if self.rope_theta <= 0:
            raise ValueError(f"model.rope_theta: must be positive, got {self.rope_theta}")
        if self.rope_ntk_factor < 1:
            raise ValueError(f"model.rope_ntk_factor: must be >= 1, got {self.rope_ntk_factor}")
        if not 0 <= self.hidden_dropout < 1:
            raise ValueError(f"model.hidden_dropout: must be in [0, 1), got {self.hidden_dropout}")
        if self.type_vocab_size < 0:
            raise ValueError(f"model.type_vocab_size: must be >= 0, got {self.type_vocab_size}")
        if self.pair_match_types and self.type_vocab_size < 2:
            raise ValueError(f"model.pair_match_types: needs model.type_vocab_size >= 2 (type 1 marks a matched "
                             f"token), got {self.type_vocab_size}")
        if self.sparse_tf_k1 < 0:
            raise ValueError(f"model.sparse_tf_k1: must be >= 0 (0 = max-pooled weights), got {self.sparse_tf_k1}")
        if not 0.0 <= self.sparse_length_b <= 1.0:
            raise ValueError(f"model.sparse_length_b: must be in [0, 1], got {self.sparse_length_b}")
        if self.sparse_init not in ("random", "ones"):
            raise ValueError(f"model.sparse_init: expected random or ones, got {self.sparse_init!r}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"model.pooling: expected cls or mean, got {self.pooling!r}")
        for name in ("rope_impl", "glu_impl"):
            if getattr(self, name) not in ("auto", "torch", "triton"):
                raise ValueError(f"model.{name}: expected auto, torch or triton, got {getattr(self, name)!r}")


# ---- generic loading --------------------------------------------------------------------------------------
def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a nested dict, converting types and rejecting unknown keys."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}{unknown[0]}: unknown config key (known: {', '.join(sorted(fields))})")
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp) or (Any,)
        if origin is tuple and Ellipsis not in args:  # tuple[float, float]: exactly that many items
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_convert(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(args, value)))
        items = [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            converted = tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return converted
    if tp is str:
        return str(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """["model.num_layers=4", "train.lr=1e-3"] -> nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value (e.g. model.num_layers=4)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    # `base: other.yaml` inherits from another preset in the same folder
    parent = data.pop("base", None)
    if parent:
        data = deep_merge(read_yaml(path.parent / parent), data)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> T:
    """Load `cls` from a YAML file (optionally one `section` of it) with `key=value` overrides."""
    data = deep_merge(read_yaml(path) if path else {}, parse_overrides(overrides))
    if section is not None:
        if overrides and any(not o.lstrip("-").startswith(section + ".") for o in overrides):
            raise ValueError(f"overrides {overrides}: only {section}.* keys apply here")
        data = data.get(section, {}) or {}
    return from_dict(cls, data, where=f"{section}." if section else "")


def save_config(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


def config_field(default_factory: Any) -> Any:
    """A nested-section field for run configs (`model: ModelConfig = config_field(ModelConfig)`)."""
    return field(default_factory=default_factory)
