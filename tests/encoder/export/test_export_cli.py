"""CLI, atomic writes, --overwrite, offline --push-to-hub, and serving an imported mGTE checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_helpers import ROOT, build_tokenizer, make_model, tiny_config  # noqa: E402
from test_mgte_import import LENGTHS, mgte_config, padded_inputs, write_checkpoint  # noqa: E402

from encoder.batch import pad, unpad  # noqa: E402
from encoder.export import bundle  # noqa: E402
from encoder.export.cli import EXIT_OFFLINE, main  # noqa: E402
from encoder.export.hf import export_pretrained  # noqa: E402


@pytest.fixture()
def trained(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = tiny_config(len(tokenizer), num_layers=1)
    model = make_model("trm", config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ckpt.safetensors"))
    overrides = [f"model.vocab_size={config.vocab_size}", "model.num_layers=1"]
    return tmp_path, model, overrides


def _export_args(tmp: Path, overrides: list[str], out: Path, *extra: str) -> list[str]:
    return ["export", "--kind", "trm", "--checkpoint", str(tmp / "ckpt.safetensors"), "--config",
            str(ROOT / "configs" / "tiny.yaml"), "--tokenizer", str(tmp / "tokenizer"), "--out", str(out),
            "--no-kernels", *extra, *overrides]


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_cli_export_overwrite_and_offline_push(trained, monkeypatch, capsys):
    tmp, _, overrides = trained
    out = tmp / "exports" / "trm"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_export_args(tmp, overrides, out, "--push-to-hub", "someone/tiny-trm")) == EXIT_OFFLINE
    err = capsys.readouterr().err
    assert "not uploaded" in err and "HF_HUB_OFFLINE" in err and "encoder.export push" in err
    assert (out / "model.safetensors").is_file() and (out / "sparse" / "modules.json").is_file()
    assert "longenc_triton.py" not in {p.name for p in out.iterdir()}  # --no-kernels

    assert main(_export_args(tmp, overrides, out)) == 2
    assert "already exists" in capsys.readouterr().err
    (out / "marker").write_text("old")
    assert main(_export_args(tmp, overrides, out, "--overwrite")) == 0
    assert not (out / "marker").exists()
    assert _leftovers(out.parent) == []


def test_failed_export_leaves_nothing_half_written(trained, monkeypatch):
    tmp, model, _ = trained
    out = tmp / "exports" / "trm"
    out.mkdir(parents=True)
    (out / "marker").write_text("previous export")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle, "write_code", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_pretrained(model, out, tmp / "tokenizer", overwrite=True)
    assert (out / "marker").read_text() == "previous export"  # the old directory is untouched
    assert [p.name for p in out.iterdir()] == ["marker"]
    with pytest.raises(RuntimeError):
        export_pretrained(model, tmp / "exports" / "fresh", tmp / "tokenizer")
    assert not (tmp / "exports" / "fresh").exists()
    assert _leftovers(out.parent) == []


@torch.no_grad()
def test_imported_mgte_is_served_by_the_exported_code(tmp_path, monkeypatch):
    from transformers import AutoModel  # noqa: PLC0415

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # the dynamic-module cache stays in the test dir
    cfg = mgte_config(vocab_size=448, rope_theta=20000.0, rope_scaling={"type": "ntk", "factor": 8.0},
                      architectures=["NewForTokenClassification"])
    body, _, _ = write_checkpoint(tmp_path / "gte", cfg, "trm")
    build_tokenizer().save_pretrained(tmp_path / "gte")
    assert main(["import-mgte", str(tmp_path / "gte"), "--out", str(tmp_path / "served"), "--no-kernels"]) == 0
    assert json.loads((tmp_path / "served" / "config.json").read_text())["rope_ntk_factor"] == 8.0
    served = AutoModel.from_pretrained(tmp_path / "served", trust_remote_code=True).eval()
    ids, mask = padded_inputs(LENGTHS, cfg["vocab_size"])
    hidden = served(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (hidden - body(ids, mask)).abs().max().item() < 1e-5


@torch.no_grad()
def test_an_mlm_with_its_own_decoder_exports_and_loads_untied(tmp_path, monkeypatch):
    from transformers import AutoModelForMaskedLM  # noqa: PLC0415

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    tokenizer = build_tokenizer()
    model = make_model("mlm", tiny_config(len(tokenizer), num_layers=1, tie_word_embeddings=False))
    export_pretrained(model, tmp_path / "mlm", tokenizer, include_kernels=False)
    assert json.loads((tmp_path / "mlm" / "config.json").read_text())["tie_word_embeddings"] is False
    served = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm", trust_remote_code=True).eval()
    decoder = served.head.decoder_weight
    assert decoder.data_ptr() != served.encoder.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(decoder, model.head.decoder_weight)  # loaded, not re-tied to the embeddings
    ids, mask = padded_inputs(LENGTHS, model.config.vocab_size)
    logits = served(input_ids=ids, attention_mask=mask).logits
    batch, info = unpad(ids, mask)
    expected = pad(model.head(model.encoder(batch)), info)
    assert (logits - expected).abs().max().item() < 1e-4


def _bad_checkpoint(tmp: Path, case: str) -> tuple[Path, str]:
    """A copy of a valid mGTE TRM directory broken one way; returns it and the file the error must name."""
    source = tmp / case
    write_checkpoint(source, mgte_config(architectures=["NewForTokenClassification"]), "trm")
    config, weights = source / "config.json", source / "model.safetensors"
    if case == "bert_model_type":
        config.write_text(json.dumps(mgte_config(model_type="bert")), encoding="utf-8")
    elif case == "no_model_type":
        config.write_text(json.dumps({k: v for k, v in mgte_config().items() if k != "model_type"}), encoding="utf-8")
    elif case == "missing_field":
        config.write_text(json.dumps({k: v for k, v in mgte_config().items() if k != "hidden_size"}), encoding="utf-8")
    elif case == "malformed_config":
        config.write_text('{"model_type": "new", "vocab_size": 512,', encoding="utf-8")
    elif case == "truncated_safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "empty_safetensors":
        weights.write_bytes(b"")
    elif case == "corrupt_bin":
        weights.unlink()
        (source / "pytorch_model.bin").write_bytes(b"not a torch file" * 8)
        return source, str(source / "pytorch_model.bin")
    return source, str(weights if "safetensors" in case else config)


@pytest.mark.parametrize("case", ["bert_model_type", "no_model_type", "missing_field", "malformed_config",
                                  "truncated_safetensors", "empty_safetensors", "corrupt_bin"])
def test_import_mgte_bad_input_exits_2_naming_the_file(tmp_path, capsys, case):
    source, named = _bad_checkpoint(tmp_path, case)
    out = tmp_path / "served"
    assert main(["import-mgte", str(source), "--out", str(out), "--no-kernels"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    if case.endswith("model_type"):
        assert "model_type" in err and "'new'" in err
    if case == "missing_field":
        assert "hidden_size" in err
    assert not out.exists() and _leftovers(tmp_path) == []  # nothing written for a rejected input
