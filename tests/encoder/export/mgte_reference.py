"""A minimal padded, eager re-implementation of the released mGTE `NewModel` layout, written from the spec's
table only (not from our encoder): embedding + type row 0 + LayerNorm, packed QKV split q/k/v, rotate-half RoPE with
positions from 0 (fixed NTK: base theta * f, inv_freq / f^(2/d)), masked softmax attention, post-LN, GeGLU with up
first and gate second. Parameter names are the checkpoint's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RefAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(hidden, 3 * hidden)
        self.o_proj = nn.Linear(hidden, hidden)


class RefMLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.up_gate_proj = nn.Linear(hidden, 2 * inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden)


class RefLayer(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.attention = RefAttention(hidden)
        self.attn_ln = nn.LayerNorm(hidden, eps=eps)
        self.mlp = RefMLP(hidden, cfg["intermediate_size"])
        self.mlp_ln = nn.LayerNorm(hidden, eps=eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_inv_freq(head_dim: int, theta: float, factor: float) -> torch.Tensor:
    """In float64, straight from the spec's words."""
    j = torch.arange(head_dim // 2, dtype=torch.float64)
    return (theta * factor) ** (-2 * j / head_dim) / factor ** (2 / head_dim)


class RefNewModel(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.cfg = cfg
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.embeddings.token_type_embeddings = nn.Embedding(1, hidden)
        self.embeddings.LayerNorm = nn.LayerNorm(hidden, eps=cfg["layer_norm_eps"])
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(RefLayer(cfg) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        batch, length = input_ids.shape
        heads = cfg["num_attention_heads"]
        head_dim = cfg["hidden_size"] // heads
        inner = cfg["intermediate_size"]
        x = self.embeddings.word_embeddings(input_ids) + self.embeddings.token_type_embeddings.weight[0]
        x = self.embeddings.LayerNorm(x)
        scaling = cfg.get("rope_scaling") or {}
        inv_freq = reference_inv_freq(head_dim, cfg["rope_theta"], scaling.get("factor", 1.0)).float()
        freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # [L, d]
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        bias = torch.zeros(batch, 1, 1, length).masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
        for layer in self.encoder.layer:
            qkv = layer.attention.qkv_proj(x).view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, L, d]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias, dim=-1)
            attn = (probs @ v).transpose(1, 2).reshape(batch, length, -1)
            x = layer.attn_ln(x + layer.attention.o_proj(attn))
            up_gate = layer.mlp.up_gate_proj(x)
            up, gate = up_gate[..., :inner], up_gate[..., inner:]
            x = layer.mlp_ln(x + layer.mlp.down_proj(F.gelu(gate) * up))
        return x * attention_mask[..., None]


class RefHeads(nn.Module):
    """lm_head (dense, gelu, norm, tied decoder + bias), 1-label token classifier, reranker pooler + classifier."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.lm_dense = nn.Linear(hidden, hidden)
        self.lm_norm = nn.LayerNorm(hidden, eps=cfg["layer_norm_eps"])
        self.lm_bias = nn.Parameter(torch.randn(cfg["vocab_size"]) * 0.1)
        self.classifier = nn.Linear(hidden, 1)
        self.pooler = nn.Linear(hidden, hidden)

    def mlm_logits(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.lm_norm(F.gelu(self.lm_dense(hidden))) @ embeddings.T + self.lm_bias

    def state_dict_for(self, kind: str) -> dict[str, torch.Tensor]:
        if kind == "mlm":
            return {"lm_head.dense.weight": self.lm_dense.weight, "lm_head.dense.bias": self.lm_dense.bias,
                    "lm_head.norm.weight": self.lm_norm.weight, "lm_head.norm.bias": self.lm_norm.bias,
                    "lm_head.decoder.bias": self.lm_bias}
        if kind == "trm":
            return {"classifier.weight": self.classifier.weight, "classifier.bias": self.classifier.bias}
        return {"new.pooler.dense.weight": self.pooler.weight, "new.pooler.dense.bias": self.pooler.bias,
                "classifier.weight": self.classifier.weight, "classifier.bias": self.classifier.bias}
