"""The encoder: BERT-style transformer with RoPE and a GLU feed-forward, on packed tokens.

Every layer takes hidden states `[T, H]` plus the `UnpaddedBatch` that says where each sequence starts;
no padded tensor is ever computed on. `forward_padded` is the Hugging Face style entry point: it unpads
once, runs the packed model, and restores padding only on the output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import first_token_attention, get_backend, resolve_backend_name
from .batch import UnpaddedBatch, pad, unpad
from .config import ModelConfig
from .kernel_switches import ACTIVATIONS, use_triton_kernel
from .rope import RotaryEmbedding

# Rows wanted from the last layer: all (None), an index tensor `[M]`, or "first" (each sequence's first token).
OutputRows = Tensor | str | None


def _row_index(rows: Tensor | str, batch: UnpaddedBatch) -> Tensor:
    return batch.first_token_index if isinstance(rows, str) else rows


class Embeddings(nn.Module):
    """Token (+ optional token-type) embedding; LayerNorm and dropout for post-LN models."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, config.hidden_size)
                                      if config.type_vocab_size > 0 else None)
        # pre-LN models normalise inside each block instead
        self.norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                     if config.norm_position == "post" else nn.Identity())
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, batch: UnpaddedBatch) -> Tensor:
        hidden = self.word_embeddings(batch.input_ids)  # [T, H]
        if self.token_type_embeddings is not None:
            if batch.token_type_ids is None:  # type 0 for every token: add the row without a gather
                hidden = hidden + self.token_type_embeddings.weight[0]
            else:
                hidden = hidden + self.token_type_embeddings(batch.token_type_ids)
        return self.dropout(self.norm(hidden))


class SelfAttention(nn.Module):
    """Packed QKV projection, RoPE on q and k, varlen attention through the backend registry."""

    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.rotary = rotary
        self.backend_name = config.attention_backend

    def forward(self, hidden: Tensor, batch: UnpaddedBatch, rows: OutputRows = None) -> Tensor:
        """`[T, H]` -> `[T, H]`, or `[M, H]` for the query rows `rows` only (keys and values always cover
        every token)."""
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden).view(num_tokens, 3, self.num_heads, self.head_dim)  # [T, 3, heads, d]
        q, k = self.rotary(qkv[:, 0], qkv[:, 1], batch.position_ids)
        v = qkv[:, 2]
        if isinstance(rows, str):  # "first": one query per sequence, O(T) instead of O(T * L)
            out = first_token_attention(q[batch.first_token_index], k, v, batch.sequence_index)  # [B, heads, d]
        else:
            attend = get_backend(self.backend_name, hidden.device)
            out = attend(q, k, v, batch.cu_seqlens, batch.max_seqlen)  # [T, heads, d]
            if rows is not None:
                out = out[rows]
        return self.o_proj(out.reshape(out.shape[0], -1))


class GatedMLP(nn.Module):
    """GLU feed-forward: up_gate (no bias) -> act(gate) * up -> down. First half = up, second = gate."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.up_gate_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = config.hidden_act
        self.act = ACTIVATIONS[config.hidden_act]
        self.impl = config.glu_impl

    # Without autograd nothing needs the [T, 2I] intermediate afterwards, so long inputs go through in row
    # chunks: peak memory stays flat in T (an 8192-token text would otherwise hold ~400 MB here at base size).
    inference_chunk_rows = 2048

    def forward(self, hidden: Tensor) -> Tensor:
        if not torch.is_grad_enabled() and hidden.shape[0] > self.inference_chunk_rows:
            return torch.cat([self._mlp(chunk) for chunk in hidden.split(self.inference_chunk_rows)])
        return self._mlp(hidden)

    def _mlp(self, hidden: Tensor) -> Tensor:
        up_gate = self.up_gate_proj(hidden)  # [T, 2I]
        if use_triton_kernel(self.impl, up_gate):
            from kernels.geglu import glu  # noqa: PLC0415  (needs triton)

            return self.down_proj(glu(up_gate, self.activation))  # one fused pass, no [T, I] temporaries
        up, gate = up_gate.split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act(gate) * up)


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.post_norm = config.norm_position == "post"
        self.attn = SelfAttention(config, rotary)
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GatedMLP(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden: Tensor, batch: UnpaddedBatch, rows: OutputRows = None) -> Tensor:
        """`[T, H]` -> `[T, H]`; with `rows`, only those rows leave the layer (`[M, H]`)."""
        residual = hidden if rows is None else hidden[_row_index(rows, batch)]
        if self.post_norm:  # BERT / mGTE: x = LN(x + f(x))
            hidden = self.attn_norm(residual + self.dropout(self.attn(hidden, batch, rows)))
            return self.mlp_norm(hidden + self.dropout(self.mlp(hidden)))
        hidden = residual + self.dropout(self.attn(self.attn_norm(hidden), batch, rows))
        return hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))


class Encoder(nn.Module):
    """The backbone. `forward(batch) -> [T, H]` on packed tokens."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = Embeddings(config)
        self.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta,
                                      config.rope_ntk_factor, impl=config.rope_impl)
        self.layers = nn.ModuleList(EncoderLayer(config, self.rotary) for _ in range(config.num_layers))
        # pre-LN stacks end with a norm; post-LN stacks are already normalised
        self.final_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                           if config.norm_position == "pre" else nn.Identity())
        self.gradient_checkpointing = config.gradient_checkpointing
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- configuration switches ------------------------------------------------------------------------
    def set_attention_backend(self, name: str) -> None:
        for layer in self.layers:
            layer.attn.backend_name = name
        self.config.attention_backend = name

    def resolved_attention_backend(self, device: torch.device | str | None = None) -> str:
        device = device or self.embeddings.word_embeddings.weight.device
        return resolve_backend_name(self.config.attention_backend, device)

    def set_rope(self, theta: float, ntk_factor: float | None = None) -> None:
        """Change the RoPE base (e.g. 10k -> 160k for the 8192 stage, or revNTK at inference)."""
        self.rotary.set_theta(theta, ntk_factor)
        self.config.rope_theta = theta
        if ntk_factor is not None:
            self.config.rope_ntk_factor = ntk_factor

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = enabled
        self.config.gradient_checkpointing = enabled

    # ---- forward -----------------------------------------------------------------------------------
    def check_batch(self, batch: UnpaddedBatch) -> None:
        if batch.max_seqlen > self.config.max_position_embeddings:
            raise ValueError(f"max_seqlen: a sequence of {batch.max_seqlen} tokens exceeds "
                             f"model.max_position_embeddings {self.config.max_position_embeddings}")
        if batch.num_tokens == 0:
            raise ValueError("input_ids: empty batch")

    def forward(self, batch: UnpaddedBatch, output_rows: OutputRows = None) -> Tensor:
        """Packed hidden states `[T, H]`.

        `output_rows` (a `[M]` index tensor, or "first" for each sequence's first token) asks for only those
        rows: the last layer then runs its output projection and feed-forward on M rows instead of T (and, for
        "first", attention for one query per sequence), as mGTE does for the masked tokens in MLM training.
        """
        self.check_batch(batch)
        hidden = self.embeddings(batch)  # [T, H]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            rows = output_rows if i == last else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(layer, hidden, batch, rows, use_reentrant=False)
            else:
                hidden = layer(hidden, batch, rows)
        return self.final_norm(hidden)  # [T, H] or [M, H]

    def cls_states(self, batch: UnpaddedBatch) -> Tensor:
        """Final hidden state of each sequence's first token `[B, H]`, computing only what it needs."""
        return self.forward(batch, output_rows="first")

    def forward_padded(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                       token_type_ids: Tensor | None = None) -> Tensor:
        """`[B, L]` ids + mask (HF convention) -> `[B, L, H]`; zeros at padded positions."""
        batch, info = unpad(input_ids, attention_mask, token_type_ids=token_type_ids)
        return pad(self.forward(batch), info)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embeddings.word_embeddings.weight.numel()
        return total
