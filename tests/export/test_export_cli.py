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
