"""Export a trained MaskedLM / TextRepresentationModel / Reranker to a `save_pretrained` directory.

One directory per model kind (what each loader needs differs, and a sentence-transformers directory has exactly
one `modules.json`):

    MLM       AutoModelForMaskedLM, AutoModel
    TRM       AutoModel, AutoModelForTokenClassification (sparse logits), SentenceTransformer (dense CLS,
              normalised; `truncate_dim` for Matryoshka) at the root; SparseEncoder at `<dir>/sparse`
              (a complete directory: same weights, hard-linked, plus the sparse pooling module)
    reranker  AutoModelForSequenceClassification, CrossEncoder (raw logit scores), AutoModel

All with `trust_remote_code=True`; the code is generated from our own modules by `bundle.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..heads import MaskedLM, Reranker, TextRepresentationModel
from . import bundle
from .card import render_card
from .files import atomic_directory, copy_tree, save_tensors, write_json
from .hf_modeling import AUTO_MAP, MODEL_CONFIG_KEYS, LongEncConfig
from .st_modules import LongEncSparsePooling

logger = logging.getLogger(__name__)

TaskModel = MaskedLM | TextRepresentationModel | Reranker
ARCHITECTURES = {"mlm": "LongEncForMaskedLM", "trm": "LongEncModel", "reranker": "LongEncForSequenceClassification"}
RUNTIME_DEFAULTS = {"attention_backend": "auto", "rope_impl": "auto", "glu_impl": "auto",
                    "gradient_checkpointing": False}
SPARSE_SUBDIR = "sparse"
SPARSE_MODULE_DIR = "1_SparsePooling"


def model_kind(model: TaskModel) -> str:
    for kind, cls in (("mlm", MaskedLM), ("trm", TextRepresentationModel), ("reranker", Reranker)):
        if isinstance(model, cls):
            return kind
    raise TypeError(f"model: expected MaskedLM, TextRepresentationModel or Reranker, got {type(model).__name__}")


def hf_config(model: TaskModel) -> LongEncConfig:
    """The exported config.json: our ModelConfig fields (runtime switches reset to auto) + head settings."""
    kind = model_kind(model)
    fields = {name: getattr(model.config, name) for name in MODEL_CONFIG_KEYS}
    fields.update(RUNTIME_DEFAULTS)
    special = model.head.special_token_ids.tolist() if kind == "trm" else None
    use_pooler = model.head.pooler is not None if kind == "reranker" else True
    config = LongEncConfig(special_token_ids=special, use_pooler=use_pooler, num_labels=1, **fields)
    config.architectures = [ARCHITECTURES[kind]]
    config.auto_map = dict(AUTO_MAP)
    return config


def export_state_dict(model: TaskModel) -> dict[str, torch.Tensor]:
    """Our own state dict, minus a tied MLM decoder (it is the embedding table; transformers re-ties it)."""
    tied = model.config.tie_word_embeddings
    return {name: t for name, t in model.state_dict().items() if not (tied and name == "head.decoder_weight")}


def load_tokenizer(tokenizer: str | Path | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    return AutoTokenizer.from_pretrained(str(tokenizer))


def export_pretrained(model: TaskModel, out_dir: str | Path, tokenizer: str | Path | PreTrainedTokenizerBase | None,
                      *, overwrite: bool = False, training_config: dict[str, Any] | None = None,
                      eval_results: dict[str, dict[str, float]] | None = None, model_name: str | None = None,
                      include_kernels: bool | None = None) -> Path:
    """Write the export atomically (temporary sibling + rename) and return its path.

    `tokenizer`: a tokenizer directory (e.g. from data_prep/tokenizer.py) or a loaded fast tokenizer; without one
    the directory still loads with AutoModel but not with sentence-transformers. `training_config` (any nested
    dict) and `eval_results` ({task: {metric: value}}) go into the model card.
    """
    kind = model_kind(model)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    if tok is not None and len(tok) > model.config.vocab_size:
        raise ValueError(f"tokenizer: {len(tok)} tokens do not fit model.vocab_size {model.config.vocab_size}")
    config = hf_config(model)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        config.save_pretrained(tmp)
        save_tensors(export_state_dict(model), tmp / "model.safetensors")
        code = bundle.write_code(tmp, with_triton=include_kernels, sentence=kind in ("trm", "reranker"))
        if tok is not None:
            tok.model_max_length = model.config.max_position_embeddings
            tok.save_pretrained(tmp)
            write_sentence_transformers(tmp, kind, model)
        if kind == "trm":
            write_sparse_directory(tmp, model, with_tokenizer=tok is not None)
        (tmp / "README.md").write_text(render_card(kind, model.config, model_name or Path(out_dir).name,
                                                   training_config, eval_results, has_tokenizer=tok is not None,
                                                   code_files=code), encoding="utf-8")
    logger.info("exported %s model to %s", kind, out_dir)
    return Path(out_dir)


# ---- sentence-transformers ------------------------------------------------------------------------------------
def _st_version_info() -> dict[str, str]:
    import sentence_transformers  # noqa: PLC0415  (only needed when a tokenizer makes the ST files useful)
    import transformers  # noqa: PLC0415

    return {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
            "pytorch": torch.__version__}


def _transformer_module(task: str, output: str, module_output: str, max_seq_length: int) -> dict[str, Any]:
    return {"transformer_task": task, "modality_config": {"text": {"method": "forward", "method_output_name": output}},
            "module_output_name": module_output, "max_seq_length": max_seq_length}


# sentence-transformers' Transformer, cleaning lone surrogates before tokenising (st_modules.LongEncTransformer)
TRANSFORMER_TYPE = f"{bundle.SENTENCE_FILE.removesuffix('.py')}.LongEncTransformer"


def write_sentence_transformers(directory: Path, kind: str, model: TaskModel) -> None:
    """modules.json + config_sentence_transformers.json + module folders, as sentence-transformers 6 saves them."""
    max_len = model.config.max_position_embeddings
    if kind == "trm":
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_TYPE},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.base.modules.normalize.Normalize"},
        ]
        write_json(directory / "sentence_bert_config.json",
                   _transformer_module("feature-extraction", "last_hidden_state", "token_embeddings", max_len))
        write_json(directory / "1_Pooling" / "config.json",
                   {"embedding_dimension": model.config.hidden_size, "pooling_mode": model.config.pooling,
                    "include_prompt": True})
        write_json(directory / "2_Normalize" / "config.json",
                   {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})
        settings = {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                    "similarity_fn_name": "cosine"}
    elif kind == "reranker":
        modules = [{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_TYPE}]
        write_json(directory / "sentence_bert_config.json",
                   _transformer_module("sequence-classification", "logits", "scores", max_len))
        # raw logits, as the released mGTE reranker and our Reranker return them (sigmoid is monotone anyway)
        settings = {"model_type": "CrossEncoder", "prompts": {}, "default_prompt_name": None,
                    "activation_fn": "torch.nn.modules.linear.Identity"}
    else:
        return  # an MLM encoder has no sentence-level output worth shipping
    write_json(directory / "modules.json", modules)
    write_json(directory / "config_sentence_transformers.json", {"__version__": _st_version_info(), **settings})


def write_sparse_directory(directory: Path, model: TextRepresentationModel, with_tokenizer: bool) -> None:
    """`<dir>/sparse`: a complete SparseEncoder directory sharing the root's weights and code."""
    sparse = directory / SPARSE_SUBDIR
    st_root_files = {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "README.md"}
    copy_tree(directory, sparse, skip=lambda rel: rel.parts[0] in st_root_files | {"1_Pooling", "2_Normalize",
                                                                                   SPARSE_SUBDIR})
    pooling = LongEncSparsePooling(model.config.hidden_size, model.config.vocab_size,
                                   model.head.special_token_ids.tolist(), model.config.sparse_tf_k1,
                                   model.config.sparse_length_b)
    pooling.head.sparse_linear.load_state_dict(model.head.sparse_linear.state_dict())
    pooling.head.token_prior.copy_(model.head.token_prior)
    pooling.head.mean_text_length.copy_(model.head.mean_text_length)
    (sparse / SPARSE_MODULE_DIR).mkdir(parents=True)
    write_json(sparse / SPARSE_MODULE_DIR / "config.json", pooling.get_config_dict())
    save_tensors(pooling.state_dict(), sparse / SPARSE_MODULE_DIR / "model.safetensors")
    if not with_tokenizer:
        return
    write_json(sparse / "sentence_bert_config.json",
               _transformer_module("feature-extraction", "last_hidden_state", "token_embeddings",
                                   model.config.max_position_embeddings))
    write_json(sparse / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": TRANSFORMER_TYPE},
        {"idx": 1, "name": "1", "path": SPARSE_MODULE_DIR,
         "type": f"{bundle.SENTENCE_FILE.removesuffix('.py')}.LongEncSparsePooling"},
    ])
    write_json(sparse / "config_sentence_transformers.json",
               {"__version__": _st_version_info(), "model_type": "SparseEncoder", "prompts": {},
                "default_prompt_name": None, "similarity_fn_name": "dot"})
