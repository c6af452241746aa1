"""Import of the published mGTE (new-impl) layout against a hand-written padded reference, and export back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mgte_reference import RefHeads, RefNewModel, reference_inv_freq  # noqa: E402

from encoder.batch import pad, unpad  # noqa: E402
from encoder.export.mgte import load_mgte, save_mgte  # noqa: E402
from encoder.heads import MaskedLM, Reranker, TextRepresentationModel  # noqa: E402
from encoder.rope import rope_inv_freq  # noqa: E402

TOL = 1e-5


def mgte_config(**overrides) -> dict:
    cfg = {"architectures": ["NewModel"], "model_type": "new", "vocab_size": 512, "hidden_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 96, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "max_position_embeddings": 1024, "type_vocab_size": 1,
           "layer_norm_eps": 1e-12, "layer_norm_type": "layer_norm", "pack_qkv": True,
           "position_embedding_type": "rope", "rope_theta": 160000.0, "rope_scaling": None, "pad_token_id": 1}
    cfg.update(overrides)
    return cfg


def randomise_(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.dim() == 1 and name.endswith("weight"):  # LayerNorm scales
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_((0.1 if param.dim() == 1 else 0.05) * noise)


def write_checkpoint(tmp: Path, cfg: dict, kind: str, seed: int = 0, as_bin: bool = False):
    torch.manual_seed(seed)
    body, heads = RefNewModel(cfg).eval(), RefHeads(cfg)
    randomise_(body, seed)
    randomise_(heads, seed + 1)
    prefix = "" if kind == "encoder" else "new."
    weights = {prefix + k: v for k, v in body.state_dict().items()}
    if kind != "encoder":
        weights.update(heads.state_dict_for(kind))
    if kind == "mlm":  # some releases store the tied decoder too
        weights["lm_head.decoder.weight"] = body.embeddings.word_embeddings.weight
    weights = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    if as_bin:
        torch.save(weights, tmp / "pytorch_model.bin")
    else:
        save_file(weights, str(tmp / "model.safetensors"))
    return body, heads, weights


def padded_inputs(lengths: list[int], vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), 1, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, vocab, (n,), generator=generator)
        ids[row, 0] = 0
        mask[row, :n] = 1
    return ids, mask


LENGTHS = [1, 7, 129, 300, 64]


def test_ntk_inv_freq_hand_case():
    # d=4, theta=100, f=4: base 400; inv_0 = 1 / 4^(2/4) = 0.5, inv_1 = 400^(-1/2) / 2 = 0.025
    assert torch.allclose(rope_inv_freq(4, 100.0, 4.0).double(), torch.tensor([0.5, 0.025], dtype=torch.float64))
    # the released TRM setting: theta 20000, NTK x8, head_dim 64
    assert torch.allclose(rope_inv_freq(64, 20000.0, 8.0).double(), reference_inv_freq(64, 20000.0, 8.0), rtol=1e-6)


@pytest.mark.parametrize("rope", [{"rope_theta": 160000.0, "rope_scaling": None},
                                  {"rope_theta": 20000.0, "rope_scaling": {"type": "ntk", "factor": 8.0}}],
                         ids=["plain", "ntk8"])
@torch.no_grad()
def test_encoder_import_matches_reference(tmp_path, rope):
    cfg = mgte_config(**rope)
    body, _, _ = write_checkpoint(tmp_path / "ckpt", cfg, "encoder")
    model = load_mgte(tmp_path / "ckpt")
    assert model.config.rope_ntk_factor == (8.0 if rope["rope_scaling"] else 1.0)
    ids, mask = padded_inputs(LENGTHS, cfg["vocab_size"])
    model.set_attention_backend("sdpa")
    ours = model.forward_padded(ids, mask)
    expected = body(ids, mask)
    assert (ours - expected).abs().max().item() < TOL


@pytest.mark.parametrize("kind", ["mlm", "trm", "reranker"])
@torch.no_grad()
def test_task_import_matches_reference_and_exports_back(tmp_path, kind):
    cfg = mgte_config(rope_theta=20000.0, rope_scaling={"type": "ntk", "factor": 8.0},
                      architectures=[{"mlm": "NewForMaskedLM", "trm": "NewForTokenClassification",
                                      "reranker": "NewForSequenceClassification"}[kind]])
    body, heads, weights = write_checkpoint(tmp_path / "ckpt", cfg, kind, as_bin=kind == "trm")
    model = load_mgte(tmp_path / "ckpt")
    expected_type = {"mlm": MaskedLM, "trm": TextRepresentationModel, "reranker": Reranker}[kind]
    assert isinstance(model, expected_type)
    model.encoder.set_attention_backend("sdpa")
    ids, mask = padded_inputs(LENGTHS, cfg["vocab_size"], seed=1)
    ref_hidden = body(ids, mask)  # [B, L, H]
    batch, info = unpad(ids, mask)
    hidden = model.encoder(batch)
    assert (pad(hidden, info) - ref_hidden).abs().max().item() < TOL
    if kind == "mlm":
        ref = heads.mlm_logits(ref_hidden, body.embeddings.word_embeddings.weight)
        assert (pad(model.head(hidden), info) - ref * mask[..., None]).abs().max().item() < 1e-4  # |logits| ~ 10
    elif kind == "trm":
        ref = torch.relu(heads.classifier(ref_hidden)).squeeze(-1) * mask
        out = model(batch).sparse
        for row, ids_row in enumerate(ids):
            for tok, w in out.to_dicts()[row].items():
                positions = (ids_row == tok) & mask[row].bool()
                assert abs(ref[row][positions].max().item() - w) < TOL
    else:
        cls = ref_hidden[:, 0]
        ref = heads.classifier(torch.tanh(heads.pooler(cls))).squeeze(-1)
        assert (model(batch) - ref).abs().max().item() < TOL

    save_mgte(model, tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    expected = {k: v for k, v in weights.items() if k != "lm_head.decoder.weight"}
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    back_cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back_cfg["rope_scaling"] == {"type": "ntk", "factor": 8.0} and back_cfg["model_type"] == "new"
    if kind == "trm":  # imported weights have no token prior; one the layout cannot hold is refused, not dropped
        assert torch.all(model.head.token_prior == 1)
        with torch.no_grad():
            model.head.token_prior[7] = 2.0
        with pytest.raises(ValueError, match="head.token_prior"):
            save_mgte(model, tmp_path / "with_prior")
        assert not (tmp_path / "with_prior").exists()
        with torch.no_grad():
            model.head.token_prior.fill_(1.0)
        model.config.sparse_tf_k1 = 1.2  # BM25-scaled weights: the layout max-pools, so refused too
        with pytest.raises(ValueError, match="sparse_tf_k1"):
            save_mgte(model, tmp_path / "with_tf")
        assert not (tmp_path / "with_tf").exists()
    if kind == "mlm":  # an own decoder has no place in the layout: refused, not dropped
        model.config.tie_word_embeddings = False
        with pytest.raises(ValueError, match="tie_word_embeddings"):
            save_mgte(model, tmp_path / "untied")
        assert not (tmp_path / "untied").exists()
    if kind == "reranker":  # token types that mark shared tokens: the layout's model never computes them
        model.config.pair_match_types = True
        with pytest.raises(ValueError, match="pair_match_types"):
            save_mgte(model, tmp_path / "matched")
        assert not (tmp_path / "matched").exists()
        model.config.pair_match_types = False
    if kind in ("trm", "reranker"):  # the layout's heads read the CLS state: a mean-pooled model is refused
        model.config.sparse_tf_k1 = 0.0
        model.config.pooling = "mean"
        with pytest.raises(ValueError, match="model.pooling"):
            save_mgte(model, tmp_path / "mean")
        assert not (tmp_path / "mean").exists()


def test_import_rejects_unknown_keys_and_options(tmp_path):
    cfg = mgte_config()
    write_checkpoint(tmp_path / "ckpt", cfg, "encoder")
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    weights["encoder.layer.0.attention.q_proj.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(ValueError, match="q_proj"):
        load_mgte(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(mgte_config(rope_scaling={"type": "dynamic",
                                                                                          "factor": 2.0})))
    with pytest.raises(ValueError, match="rope_scaling"):
        load_mgte(tmp_path / "ckpt")
