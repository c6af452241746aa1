"""Export tiny MLM / TRM / reranker models, load them in a fresh process with transformers and
sentence-transformers only (the repository not importable), and compare every output with our own model."""

from __future__ import annotations

import json
import re
import sys
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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer))
    models = {kind: make_model(kind, config, seed=i, special_ids=tuple(tokenizer.all_special_ids))
              for i, kind in enumerate(("mlm", "trm", "reranker"))}
    for kind, model in models.items():
        export_pretrained(model, root / kind, tokenizer, training_config={"lr": 5e-4, "steps": 10},
                          eval_results={"MIRACL-tiny": {"ndcg@10": 0.123}})
    (root / "inputs.json").write_text(json.dumps({"texts": TEXTS, "pairs": PAIRS, "truncate_dim": TRUNCATE_DIM}),
                                      encoding="utf-8")
    proc = run_fresh(str(FRESH_SCRIPT), [str(root), str(root / "out.pt")], root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    assert "fresh process: ok" in proc.stdout
    return models, torch.load(root / "out.pt"), root


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _ours(encoder, input_ids, attention_mask):
    batch, info = unpad(input_ids, attention_mask)
    return batch, info, encoder(batch)


def test_fresh_process_cannot_import_the_repository(exported):
    # the script itself exits non-zero when `encoder` is importable; here: the inputs really are mixed-length
    _, out, _ = exported
    lengths = out["attention_mask"].sum(1)
    assert lengths.max() > 512 and lengths.min() < 32
    assert len({len(t) for t in TEXTS}) == len(TEXTS)


@torch.no_grad()
def test_mlm_auto_models_match(exported):
    models, out, _ = exported
    model = models["mlm"]
    batch, info, hidden = _ours(model.encoder, out["input_ids"], out["attention_mask"])
    assert _max_diff(out["mlm_hidden"], pad(hidden, info)) < TOL
    assert _max_diff(out["mlm_logits"], pad(model.head(hidden), info)) < TOL
    assert out["mlm_logits"].abs().max() > 0.1  # a tied decoder left uninitialised would not give this


@torch.no_grad()
def test_trm_dense_sparse_and_token_logits_match(exported):
    models, out, _ = exported
    model = models["trm"]
    batch, info, hidden = _ours(model.encoder, out["input_ids"], out["attention_mask"])
    ours = model(batch)
    assert _max_diff(out["trm_hidden"], pad(hidden, info)) < TOL
    assert _max_diff(out["trm_sparse_logits"], pad(model.head.sparse_linear(hidden), info)) < TOL
    assert _max_diff(out["st_dense"], ours.dense) < TOL
    assert torch.allclose(out["st_dense"].norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert out["st_dense_truncated"].shape == (len(TEXTS), TRUNCATE_DIM)
    assert _max_diff(out["st_dense_truncated"], ours.dense_at(TRUNCATE_DIM)) < TOL
    assert int(out["st_max_seq_length"]) == model.config.max_position_embeddings
    expected = torch.zeros(len(TEXTS), model.config.vocab_size)
    expected[ours.sparse.sequence_index, ours.sparse.token_ids] = ours.sparse.weights
    assert _max_diff(out["st_sparse"], expected) < TOL
    assert (expected > 0).sum() > 20  # non-trivial sparse vectors
    assert out["st_sparse"][:, model.head.special_token_ids].abs().max() == 0


@torch.no_grad()
def test_reranker_sequence_classification_and_cross_encoder_match(exported):
    models, out, _ = exported
    model = models["reranker"]
    batch, _ = unpad(out["pair_input_ids"], out["pair_attention_mask"])
    logits = model(batch)
    assert _max_diff(out["rr_logits"][:, 0], logits) < TOL
    assert _max_diff(out["ce_scores"], logits) < TOL
    assert logits.std() > 0  # distinct scores for distinct pairs


def test_export_layout_and_card(exported):
    _, _, root = exported
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
    _, _, root = exported
    if not (root / "trm" / "longenc_triton.py").is_file():
        pytest.skip("kernels/ was not present at export time, so no Triton code was bundled")
    pytest.importorskip("triton")
    proc = run_fresh(str(Path(__file__).resolve().parent / "fresh_triton_script.py"), [str(root / "trm")], root,
                     extra_env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    diff = float(proc.stdout.strip().split("max_abs_diff=")[-1])
    assert diff < TOL
