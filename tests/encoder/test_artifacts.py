"""`final/` directories (encoder.artifacts): sealed with a sha256 manifest, written atomically, verified on load."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from data_prep.tokenizer import special_ids
from encoder.artifacts import load_encoder_weights, load_final, save_final
from encoder.batch import UnpaddedBatch
from encoder.checkpoint import CheckpointError
from encoder.config import ModelConfig
from encoder.heads import Reranker, TextRepresentationModel


def _tiny_trm(tokenizer, seed: int = 0) -> tuple[TextRepresentationModel, ModelConfig, dict]:
    special = special_ids(tokenizer)
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=special.padded_vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                         intermediate_size=64, max_position_embeddings=128, attention_backend="reference")
    info = {"kind": "trm", "special_token_ids": list(special.all_special)}
    return TextRepresentationModel(config, special.all_special), config, info


def test_final_roundtrip_is_sealed(tiny_assets, tiny_tokenizer, tmp_path):
    model, config, info = _tiny_trm(tiny_tokenizer)
    final = save_final(tmp_path / "final", model, config, tiny_assets.tokenizer_dir, info)
    assert (final / "manifest.json").is_file() and not list(tmp_path.glob("*.tmp-*"))
    loaded, tokenizer, loaded_info = load_final(final)
    assert loaded_info == info and len(tokenizer) == len(tiny_tokenizer)
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


def test_damaged_final_is_refused_naming_the_file(tiny_assets, tiny_tokenizer, tmp_path):
    model, config, info = _tiny_trm(tiny_tokenizer)
    final = save_final(tmp_path / "final", model, config, tiny_assets.tokenizer_dir, info)
    data = bytearray((final / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit: torch.load would still read changed weights
    (final / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.pt: checksum mismatch"):
        load_final(final)
    with pytest.raises(CheckpointError, match=r"model\.pt: checksum mismatch"):
        load_encoder_weights(Reranker(config), final)  # initialising another model from it is refused too


def test_failed_save_keeps_the_previous_final(tiny_assets, tiny_tokenizer, tmp_path, monkeypatch):
    old, config, info = _tiny_trm(tiny_tokenizer, seed=0)
    final = save_final(tmp_path / "final", old, config, tiny_assets.tokenizer_dir, info)
    new, _, _ = _tiny_trm(tiny_tokenizer, seed=1)
    monkeypatch.setattr("encoder.artifacts.save_config", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_final(final, new, config, tiny_assets.tokenizer_dir, info)
    assert not list(tmp_path.glob("*.tmp-*"))
    loaded, _, _ = load_final(final)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in old.state_dict().items())


def test_a_trm_head_from_before_the_mean_length_initialises_the_next_stage(tiny_assets, tiny_tokenizer, tmp_path):
    # a TRM saved before the head had `mean_text_length` (one optional buffer short) still passes on its
    # head, idf prior included; a head of another kind does not
    model, config, info = _tiny_trm(tiny_tokenizer)
    with torch.no_grad():
        model.head.token_prior.uniform_(0.5, 2.0)
    del model.head._buffers["mean_text_length"]  # the head as it was saved before the buffer existed
    assert "head.mean_text_length" not in model.state_dict()
    final = save_final(tmp_path / "old_trm", model, config, tiny_assets.tokenizer_dir, info)
    fresh, _, _ = _tiny_trm(tiny_tokenizer, seed=1)
    assert load_encoder_weights(fresh, final).endswith("(encoder + head)")
    assert torch.equal(fresh.head.token_prior, model.head.token_prior)
    assert float(fresh.head.mean_text_length) == 0
    assert load_encoder_weights(Reranker(config), final).endswith("head freshly initialised)")


def test_a_reranker_with_match_types_starts_from_a_one_type_trm_unchanged(tiny_assets, tiny_tokenizer, tmp_path):
    # the new token-type row starts as a copy of row 0, so before training the reranker's encoder computes exactly
    # what the TRM's did, marked tokens or not
    model, config, info = _tiny_trm(tiny_tokenizer)
    final = save_final(tmp_path / "trm", model, config, tiny_assets.tokenizer_dir, info)
    wider = replace(config, type_vocab_size=2, pair_match_types=True)
    reranker = Reranker(wider).eval()
    load_encoder_weights(reranker, final)
    rows = reranker.encoder.embeddings.token_type_embeddings.weight
    assert torch.equal(rows[1], rows[0])
    assert torch.equal(rows[0], model.encoder.embeddings.token_type_embeddings.weight[0])
    batch = UnpaddedBatch.from_sequences([[0, 5, 6, 2, 2, 6, 7, 2], [0, 9, 2, 2, 9, 9, 2]])
    with torch.no_grad():
        assert torch.allclose(reranker.encoder(batch), model.encoder.eval()(batch), atol=1e-6)
    with pytest.raises(RuntimeError, match="token_type_embeddings"):  # only widening: a model without types refuses
        load_encoder_weights(Reranker(replace(config, type_vocab_size=0)), final)


def test_reranker_final_from_before_pooling_was_recorded_reads_the_cls_state(tiny_assets, tiny_tokenizer, tmp_path):
    """A reranker `final/` whose info has no "pooling" was trained reading the CLS state, whatever its model.yaml
    says (before the reranker honoured model.pooling, the pipeline wrote pooling=mean there): it loads as CLS."""
    _, config, _ = _tiny_trm(tiny_tokenizer)
    config = replace(config, pooling="mean")
    model = Reranker(config).eval()
    old_info = {"kind": "reranker", "use_pooler": True}
    old, _, _ = load_final(save_final(tmp_path / "old", model, config, tiny_assets.tokenizer_dir, old_info))
    new, _, _ = load_final(save_final(tmp_path / "new", model, config, tiny_assets.tokenizer_dir,
                                      {**old_info, "pooling": "mean"}))
    assert old.config.pooling == "cls" and new.config.pooling == "mean"
    batch = UnpaddedBatch.from_sequences([[0, 5, 9, 2, 2, 7, 2], [0, 4, 2, 2, 8, 11, 12, 2]])
    with torch.no_grad():
        assert torch.allclose(new(batch), model(batch))
        assert (old(batch) - model(batch)).abs().max() > 1e-4
