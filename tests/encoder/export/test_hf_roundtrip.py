"""Export tiny MLM / TRM / reranker models, load them in a fresh process with transformers and
sentence-transformers only (the repository not importable), and compare every output with our own model."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_helpers import PAIRS, TEXTS, build_tokenizer, make_model, run_fresh, tiny_config  # noqa: E402

from encoder.batch import pad, unpad  # noqa: E402
from encoder.export.hf import export_pretrained  # noqa: E402

TOL = 1e-5
TRUNCATE_DIM = 32
FRESH_SCRIPT = Path(__file__).resolve().parent / "fresh_load_script.py"


# lone surrogates (what `surrogateescape` gives for undecodable bytes) and a surrogate pair, and what the exports
# and our API must see instead: U+FFFD for each lone one, the character for the pair
DIRTY_TEXTS = ["bad \ud800 byte", "undecodable \udcff\udcfe", "\ud83d\ude00 pair"]
CLEANED_TEXTS = ["bad \ufffd byte", "undecodable \ufffd\ufffd", "\U0001f600 pair"]


def weight_every_token_(model) -> None:
    """A sparse head whose ReLU weight is positive for every token, specials included: then the output depends on
    exactly which ids the head drops, so a wrong `special_token_ids` buffer cannot pass by luck."""
    with torch.no_grad():
        model.head.sparse_linear.bias.fill_(4.0)
        # and a token prior that is not all ones, so an export that dropped it could not match
        model.head.token_prior.copy_(torch.rand(model.config.vocab_size, generator=torch.Generator().manual_seed(3))
                                     + 0.5)
        model.head.mean_text_length.fill_(20.0)  # BM25's length normalisation, which the exports must carry too


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer))
    models = {kind: make_model(kind, config, seed=i, special_ids=tuple(tokenizer.all_special_ids))
              for i, kind in enumerate(("mlm", "trm", "reranker"))}
    # the TRM's lexical weights scaled like BM25 terms (TEXTS repeat words: tf > 1 and lengths differ)
    models["trm"] = make_model("trm", tiny_config(len(tokenizer), sparse_tf_k1=1.2), seed=1,
                               special_ids=tuple(tokenizer.all_special_ids))
    weight_every_token_(models["trm"])
    # the reranker marks the tokens a query and its document share (token type 1) and reads the mean of its token
    # states (model.pooling=mean, as the small preset trains it): the exports must compute both
    models["reranker"] = make_model("reranker", tiny_config(len(tokenizer), type_vocab_size=2, pair_match_types=True,
                                                            pooling="mean"), seed=2)
    models["trm_mean"] = make_model("trm", tiny_config(len(tokenizer), pooling="mean"), seed=7,
                                    special_ids=tuple(tokenizer.all_special_ids))
    for kind, model in models.items():
        export_pretrained(model, root / kind, tokenizer, training_config={"lr": 5e-4, "steps": 10},
                          eval_results={"MIRACL-tiny": {"ndcg@10": 0.123}})
    inputs = {"texts": TEXTS, "pairs": PAIRS, "truncate_dim": TRUNCATE_DIM, "dirty_texts": DIRTY_TEXTS,
              "cleaned_texts": CLEANED_TEXTS}
    (root / "inputs.json").write_text(json.dumps(inputs), encoding="utf-8")
    proc = run_fresh(str(FRESH_SCRIPT), [str(root), str(root / "out.pt")], root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return models, torch.load(root / "out.pt"), root, proc


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _ours(encoder, input_ids, attention_mask):
    batch, info = unpad(input_ids, attention_mask)
    return batch, info, encoder(batch)


def test_fresh_process_cannot_import_the_repository(exported):
    # the script itself exits non-zero when `encoder` is importable; here: the inputs really are mixed-length
    _, out, _, _ = exported
    lengths = out["attention_mask"].sum(1)
    assert lengths.max() > 512 and lengths.min() < 32
    assert len({len(t) for t in TEXTS}) == len(TEXTS)


@torch.no_grad()
def test_mlm_auto_models_match(exported):
    models, out, _, _ = exported
    model = models["mlm"]
    batch, info, hidden = _ours(model.encoder, out["input_ids"], out["attention_mask"])
    assert _max_diff(out["mlm_hidden"], pad(hidden, info)) < TOL
    assert _max_diff(out["mlm_logits"], pad(model.head(hidden), info)) < TOL
    assert out["mlm_logits"].abs().max() > 0.1  # a tied decoder left uninitialised would not give this


@torch.no_grad()
def test_trm_dense_and_token_logits_match(exported):
    models, out, _, _ = exported
    model = models["trm"]
    batch, info, hidden = _ours(model.encoder, out["input_ids"], out["attention_mask"])
    ours = model(batch)
    assert _max_diff(out["trm_hidden"], pad(hidden, info)) < TOL
    assert _max_diff(out["trm_sparse_logits"], pad(model.head.sparse_logits(hidden, batch.input_ids)[:, None],
                                                   info)) < TOL
    assert _max_diff(out["st_dense"], ours.dense) < TOL
    assert torch.allclose(out["st_dense"].norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert out["st_dense_truncated"].shape == (len(TEXTS), TRUNCATE_DIM)
    assert _max_diff(out["st_dense_truncated"], ours.dense_at(TRUNCATE_DIM)) < TOL
    assert int(out["st_max_seq_length"]) == model.config.max_position_embeddings


@torch.no_grad()
def test_mean_pooled_trm_dense_matches_sentence_transformers(exported):
    models, out, root, _ = exported
    model = models["trm_mean"]
    batch, _ = unpad(out["input_ids"], out["attention_mask"])
    ours = model(batch).dense
    assert json.loads((root / "trm_mean" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert _max_diff(out["st_dense_mean"], ours) < TOL
    cls = torch.nn.functional.normalize(model.encoder(batch)[batch.first_token_index], dim=-1)
    assert _max_diff(ours, cls) > 1e-2  # really the mean, not the CLS state


@torch.no_grad()
def test_trm_sparse_outputs_match_when_every_token_is_weighted(exported):
    """SparseEncoder and `sparse_embedding()` of the export drop exactly our special ids (issue 17.1: transformers 5
    left the non-persistent `special_token_ids` buffer as uninitialised memory)."""
    models, out, _, _ = exported
    model = models["trm"]
    batch, info, hidden = _ours(model.encoder, out["input_ids"], out["attention_mask"])
    assert (model.head.sparse_linear(hidden) > 0).all()  # the premise: no token has weight 0
    ours = model(batch).sparse
    expected = torch.zeros(len(TEXTS), model.config.vocab_size)
    expected[ours.sequence_index, ours.token_ids] = ours.weights
    specials = model.head.special_token_ids
    assert expected[:, specials].abs().max() == 0 and (expected > 0).sum() > 20
    assert _max_diff(out["st_sparse"], expected) < TOL
    loaded = out["trm_sparse_embedding"]
    assert [sorted(d) for d in loaded] == [sorted(d) for d in ours.to_dicts()]
    assert max(abs(w - ref[t]) for d, ref in zip(loaded, ours.to_dicts()) for t, w in d.items()) < TOL


def test_loaded_export_buffers_equal_our_model(exported):
    """Every buffer of the model transformers loads (all non-persistent: RoPE tables, special ids) equals ours."""
    models, out, _, _ = exported
    ours = dict(models["trm"].named_buffers())
    loaded = out["trm_buffers"]
    assert set(loaded) == set(ours)  # the token-classification class has our TRM's modules and names
    for name, buffer in loaded.items():
        assert buffer.dtype == ours[name].dtype and torch.equal(buffer, ours[name]), name


@pytest.mark.parametrize("kind", ["mlm", "trm", "reranker"])
def test_exports_load_without_any_warning(exported, kind):
    """Issue 17.2: no load report ("UNEXPECTED keys head.sparse_linear"), no warning, no log record, for every
    loader of every export (the script records them per stage, and prints nothing but its last line)."""
    _, out, _, proc = exported
    stages = {name: messages for name, messages in out["diagnostics"].items() if name.split()[0].startswith(kind)}
    assert len(stages) >= 3, sorted(out["diagnostics"])
    assert {name: messages for name, messages in stages.items() if messages} == {}
    assert proc.stderr == "" and proc.stdout == "fresh process: ok\n", proc.stdout[-2000:] + proc.stderr[-4000:]


def test_exports_replace_lone_surrogates_and_reject_none(exported):
    """Issue 17.13: SentenceTransformer, SparseEncoder and CrossEncoder of the exports see U+FFFD for a lone
    surrogate (and the character for a pair) instead of crashing in the tokenizer; None is an error, never the
    text "None" (sentence-transformers itself rejects it before the input module sees it)."""
    _, out, _, _ = exported
    for dirty, cleaned in (("st_dense_dirty", "st_dense_cleaned"), ("st_sparse_dirty", "st_sparse_cleaned"),
                           ("ce_scores_dirty", "ce_scores_cleaned")):
        assert isinstance(out[dirty], torch.Tensor), f"{dirty}: {out[dirty]}"
        assert _max_diff(out[dirty], out[cleaned]) < TOL, dirty
    assert out["st_dense_cleaned"][0].ne(out["st_dense_cleaned"][1]).any()  # distinct texts, distinct vectors
    for key in ("st_none", "ce_none"):
        assert isinstance(out[key], str) and "NoneType" in out[key], out[key]


@torch.no_grad()
def test_reranker_sequence_classification_and_cross_encoder_match(exported):
    models, out, _, _ = exported
    model = models["reranker"]
    batch, _ = unpad(out["pair_input_ids"], out["pair_attention_mask"])
    logits = model(batch)
    assert _max_diff(out["rr_logits"][:, 0], logits) < TOL
    assert _max_diff(out["ce_scores"], logits) < TOL
    _, info, hidden = _ours(model.encoder, out["pair_input_ids"], out["pair_attention_mask"])
    assert _max_diff(out["rr_hidden"], pad(hidden, info)) < TOL
    assert logits.std() > 0  # distinct scores for distinct pairs
    unmarked = type(model)(replace(model.config, pair_match_types=False), use_pooler=True).eval()
    unmarked.load_state_dict(model.state_dict())
    assert _max_diff(unmarked(batch), logits) > 1e-3  # the match types were applied, not dropped on the way
    cls_read = type(model)(replace(model.config, pooling="cls"), use_pooler=True).eval()
    cls_read.load_state_dict(model.state_dict())
    assert _max_diff(cls_read(batch), logits) > 1e-3  # and the mean was read, not the CLS state


def test_export_layout_and_card(exported):
    _, _, root, _ = exported
    for kind in ("mlm", "trm", "reranker"):
        config = json.loads((root / kind / "config.json").read_text())
        assert config["model_type"] == "longenc" and "AutoModel" in config["auto_map"]
        assert (root / kind / "modeling_longenc.py").is_file() and (root / kind / "tokenizer.json").is_file()
        card = (root / kind / "README.md").read_text()
        assert "ndcg@10" in card and "lr: 0.0005" in card
    assert (root / "trm" / "sparse" / "modules.json").is_file()
    assert not (root / "mlm" / "modules.json").exists()
    modeling = (root / "trm" / "modeling_longenc.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+(encoder|kernels)\b", modeling, flags=re.MULTILINE)


def test_bundled_triton_kernels_run_without_the_repository(exported):
    """The shipped `longenc_triton.py` (kernels/ bundled) under the Triton interpreter on CPU matches SDPA."""
    _, _, root, _ = exported
    if not (root / "trm" / "longenc_triton.py").is_file():
        pytest.skip("kernels/ was not present at export time, so no Triton code was bundled")
    pytest.importorskip("triton")
    proc = run_fresh(str(Path(__file__).resolve().parent / "fresh_triton_script.py"), [str(root / "trm")], root,
                     extra_env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    diff = float(proc.stdout.strip().split("max_abs_diff=")[-1])
    assert diff < TOL


@torch.no_grad()
def test_init_weights_rebuilds_every_derived_buffer():
    """The hook transformers 5 calls on modules whose buffers it refilled with `empty_like`."""
    from encoder.export.hf_modeling import LongEncConfig, LongEncForSparseEmbedding  # noqa: PLC0415

    config = LongEncConfig(special_token_ids=[0, 2, 5], vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=48, max_position_embeddings=128)
    model = LongEncForSparseEmbedding(config)
    expected = {name: b.clone() for name, b in model.named_buffers()}
    assert expected["head.special_token_ids"].tolist() == [0, 2, 5]
    for buffer in model.buffers():
        buffer.fill_(77)  # what uninitialised memory may hold
    for module in model.modules():
        model._init_weights(module)
    assert all(torch.equal(b, expected[name]) for name, b in model.named_buffers())


def test_a_derived_buffer_without_a_rebuild_rule_is_an_error():
    from encoder.export.hf_modeling import rebuild_derived_buffers  # noqa: PLC0415

    module = torch.nn.Module()
    module.register_buffer("lookup", torch.zeros(3), persistent=False)
    with pytest.raises(TypeError, match="lookup"):
        rebuild_derived_buffers(module)
    module.register_buffer("lookup", torch.zeros(3))  # a persistent buffer is loaded from the checkpoint: fine
    rebuild_derived_buffers(module)


def test_exports_score_with_the_statistics_of_a_collection_like_our_model(exported):
    """`fit_sparse_statistics` on both sparse exports (the collection: the texts themselves) gives what our head
    gives after `heads.fit_sparse_statistics` on the same token ids: a new idf prior and mean length."""
    import copy

    from encoder.heads import fit_sparse_statistics

    models, out, _, _ = exported
    model = copy.deepcopy(models["trm"])
    tokenizer = build_tokenizer()
    fit_sparse_statistics(model.head, tokenizer(TEXTS, add_special_tokens=False)["input_ids"])
    assert not torch.equal(model.head.token_prior, models["trm"].head.token_prior)  # the fit changed something
    batch, _, _ = _ours(model.encoder, out["input_ids"], out["attention_mask"])
    ours = model(batch).sparse
    expected = torch.zeros(len(TEXTS), model.config.vocab_size)
    expected[ours.sequence_index, ours.token_ids] = ours.weights
    assert _max_diff(out["st_sparse_fitted"], expected) < TOL
    assert _max_diff(out["st_sparse"], expected) > 1e-3  # and it differs from the unfitted export
    loaded = out["trm_sparse_embedding_fitted"]
    assert [sorted(d) for d in loaded] == [sorted(d) for d in ours.to_dicts()]
    assert max(abs(w - ref[t]) for d, ref in zip(loaded, ours.to_dicts()) for t, w in d.items()) < TOL
