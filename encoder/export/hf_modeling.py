"""Hugging Face wrappers around our own Encoder and heads (shipped inside every export).

This file is importable from the repository (tests use it in-process), and `encoder/export/bundle.py` pastes it,
together with batch.py, attention.py, rope.py, config.py, model.py and heads.py, into the single
`modeling_longenc.py` of an export, so the published code IS our code: parity holds by construction.

Every class keeps the checkpoint layout of our own task models: the backbone under `encoder.*`, the task head under
`head.*`. So `model.safetensors` is `MaskedLM/TextRepresentationModel/Reranker.state_dict()` as is; `LongEncModel`
(the backbone) loads every export and leaves the head's keys out without a load report.

The fast path is the native one: padding is removed once at the entry (`unpad`), the model runs on packed tokens
with the best attention backend of the registry (on GPU: the bundled Triton kernels once `make gpu-check` has
recorded a pass for that device, else flash/xformers/SDPA; `attention_backend="triton"` forces them), and padding
is restored only on the outputs.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from ..batch import IGNORE_INDEX, pad, unpad
from ..config import ModelConfig
from ..heads import MLMHead, Reranker, RerankerHead, TRMHead, fit_sparse_statistics
from ..model import Encoder
from ..rope import RotaryEmbedding

try:  # transformers >= 5: init functions that skip weights already loaded from the checkpoint
    from transformers import initialization as hf_init
except ImportError:  # transformers 4: plain torch init (it only initialises missing weights anyway)
    hf_init = nn.init

MODEL_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
DEFAULT_SPECIAL_TOKEN_IDS = (0, 1, 2, 3)  # XLM-R <s>, <pad>, </s>, <unk>


class LongEncConfig(PretrainedConfig):
    """`ModelConfig` fields + the head settings. Key names are ModelConfig's, so conversion is by name."""

    model_type = "longenc"

    def __init__(self, special_token_ids: list[int] | None = None, use_pooler: bool = True, **kwargs) -> None:
        defaults = ModelConfig()
        ours = {name: kwargs.pop(name, getattr(defaults, name)) for name in MODEL_CONFIG_KEYS}
        kwargs.setdefault("num_labels", 1)
        super().__init__(**kwargs)
        for name, value in ours.items():  # after super(): the base class would reset e.g. pad_token_id
            setattr(self, name, value)
        self.special_token_ids = list(special_token_ids if special_token_ids is not None
                                      else DEFAULT_SPECIAL_TOKEN_IDS)
        self.use_pooler = use_pooler

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_CONFIG_KEYS})


def rebuild_derived_buffers(module: nn.Module) -> None:
    """Recompute `module`'s own non-persistent buffers from its settings: they are derived, never in a checkpoint.

    transformers 5 builds a model on the meta device and, after loading, refills every non-persistent buffer with
    `empty_like` (uninitialised memory), relying on `_init_weights` to give it a value. Every module of ours that
    owns such a buffer is listed here; one that is not is an error, so a new buffer cannot silently ship garbage.
    """
    if not module._non_persistent_buffers_set:
        return
    if isinstance(module, RotaryEmbedding):
        module.set_theta(module.theta, module.ntk_factor)  # inv_freq, cos/sin tables
    elif isinstance(module, TRMHead):
        module.reset_special_token_ids()
    else:
        raise TypeError(f"{type(module).__name__}: non-persistent buffers {sorted(module._non_persistent_buffers_set)}"
                        " have no rebuild rule in hf_modeling.rebuild_derived_buffers; transformers would leave them"
                        " uninitialised after from_pretrained")


class LongEncPreTrainedModel(PreTrainedModel):
    config_class = LongEncConfig
    # never a submodule name: every class shares the `encoder.*` / `head.*` layout, so no prefix juggling on load
    base_model_prefix = "longenc"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderLayer"]

    def _build_encoder(self, config: LongEncConfig) -> None:
        self.encoder = Encoder(config.model_config())

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, then every derived buffer rebuilt: `_init_weights` already does it under
        transformers 5, but whether a loader calls it for a given module is its internal business."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        with torch.no_grad():
            for module in model.modules():
                rebuild_derived_buffers(module)
        return loaded

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        rebuild_derived_buffers(module)
        if isinstance(module, nn.Linear):
            hf_init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            hf_init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            hf_init.ones_(module.weight)
            hf_init.zeros_(module.bias)
        elif isinstance(module, MLMHead):
            hf_init.zeros_(module.bias)
        elif isinstance(module, TRMHead):
            hf_init.ones_(module.token_prior)  # an export without a prior: none (loaded ones overwrite this)
            hf_init.zeros_(module.mean_text_length)  # likewise: no length normalisation

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.embeddings.word_embeddings = value

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.encoder.set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.set_gradient_checkpointing(False)

    def _packed_forward(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None):
        batch, info = unpad(input_ids, attention_mask, token_type_ids=token_type_ids)
        return batch, info, self.encoder(batch)  # hidden [T, H]


class LongEncModel(LongEncPreTrainedModel):
    """AutoModel: `last_hidden_state [B, L, H]` (zeros at padding); `pooler_output` = CLS state."""

    # the backbone of any export: its task head's weights are expected to be left out, not reported as UNEXPECTED
    # (sentence-transformers loads the TRM this way, and a load report reads as a broken checkpoint)
    _keys_to_ignore_on_load_unexpected = [r"^head\."]

    def __init__(self, config: LongEncConfig) -> None:
        super().__init__(config)
        self._build_encoder(config)
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling | tuple:
        batch, info, hidden = self._packed_forward(input_ids, attention_mask, token_type_ids)
        last_hidden_state = pad(hidden, info)
        cls_hidden = hidden[batch.first_token_index]  # [B, H]
        if return_dict is False:
            return last_hidden_state, cls_hidden
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=cls_hidden)


class LongEncForMaskedLM(LongEncPreTrainedModel):
    """AutoModelForMaskedLM: logits `[B, L, V]` for every real token; the loss (with `labels`) only on masked ones."""

    _tied_weights_keys = {"head.decoder_weight": "encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config: LongEncConfig) -> None:
        super().__init__(config)
        self._build_encoder(config)
        self.head = MLMHead(self.encoder.config, self.encoder.embeddings.word_embeddings)
        self.post_init()

    def get_output_embeddings(self) -> None:
        # the decoder is a bare Parameter, not a module; tying is declared above (and skipped by transformers when
        # config.tie_word_embeddings is off)
        return None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None, return_dict: bool | None = None, **kwargs) -> MaskedLMOutput | tuple:
        batch, info, hidden = self._packed_forward(input_ids, attention_mask, token_type_ids)
        logits = pad(self.head(hidden), info)  # [B, L, V]: what pipelines expect; training uses our MaskedLM
        loss = None
        if labels is not None:
            packed_labels = labels.flatten()[info.indices]
            masked = (packed_labels != IGNORE_INDEX).nonzero().squeeze(1)
            loss = F.cross_entropy(self.head(hidden[masked]).float(), packed_labels[masked])
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return MaskedLMOutput(loss=loss, logits=logits)


class LongEncForSparseEmbedding(LongEncPreTrainedModel):
    """AutoModelForTokenClassification: per-token sparse weight logits `[B, L, 1]` (before the ReLU, times the
    token prior), like the released mGTE `NewForTokenClassification`; `sparse_embedding(...)` gives the
    max-reduced lexical weights."""

    def __init__(self, config: LongEncConfig) -> None:
        super().__init__(config)
        self._build_encoder(config)
        self.head = TRMHead(self.encoder.config, tuple(config.special_token_ids))
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> TokenClassifierOutput | tuple:
        batch, info, hidden = self._packed_forward(input_ids, attention_mask, token_type_ids)
        logits = pad(self.head.sparse_logits(hidden, batch.input_ids)[:, None], info)  # [B, L, 1]
        if return_dict is False:
            return (logits,)
        return TokenClassifierOutput(logits=logits)

    @torch.no_grad()
    def sparse_embedding(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[dict[int, float]]:
        batch, _, hidden = self._packed_forward(input_ids, attention_mask, None)
        return self.head.sparse_weights(hidden, batch).to_dicts()

    def fit_sparse_statistics(self, documents: list[list[int]]) -> None:
        """Score with the idf prior and mean length of `documents` (the collection you search, as token ids
        without special tokens) instead of the training documents' values, like `encoder.evaluate
        --sparse-statistics collection`."""
        fit_sparse_statistics(self.head, documents)


class LongEncForSequenceClassification(LongEncPreTrainedModel):
    """AutoModelForSequenceClassification: the reranker, one logit per `[CLS] q [SEP] d` pair -> logits `[B, 1]`."""

    def __init__(self, config: LongEncConfig) -> None:
        super().__init__(config)
        self._build_encoder(config)
        self.head = RerankerHead(self.encoder.config, use_pooler=config.use_pooler)
        self.post_init()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None, return_dict: bool | None = None,
                **kwargs) -> SequenceClassifierOutput | tuple:
        batch, _ = unpad(input_ids, attention_mask, token_type_ids=token_type_ids)
        logits = Reranker.forward(self, batch)[:, None]  # [B, 1]: our Reranker's own forward, on this module
        loss = None
        if labels is not None:  # regression / binary relevance on the single logit
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(1).float(), labels.float())
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AUTO_MAP = {
    "AutoConfig": "modeling_longenc.LongEncConfig",
    "AutoModel": "modeling_longenc.LongEncModel",
    "AutoModelForMaskedLM": "modeling_longenc.LongEncForMaskedLM",
    "AutoModelForTokenClassification": "modeling_longenc.LongEncForSparseEmbedding",
    "AutoModelForSequenceClassification": "modeling_longenc.LongEncForSequenceClassification",
}
