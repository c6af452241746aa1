import pytest
import torch
from model_helpers import ROOT_CONFIGS, tiny_config

from encoder.cli import main as cli_main
from encoder.config import ModelConfig, load_config, parse_overrides
from encoder.model import Encoder


def test_base_preset_has_mgte_shape_and_parameter_count():
    config = load_config(ModelConfig, ROOT_CONFIGS / "base.yaml", section="model")
    assert (config.num_layers, config.hidden_size, config.num_heads, config.intermediate_size) == (12, 768, 12, 3072)
    assert config.norm_position == "post" and config.layer_norm_eps == 1e-12
    assert config.max_position_embeddings == 8192 and config.vocab_size == 250048
    with torch.device("meta"):
        encoder = Encoder(config)
    # the spec's derivation: 305,368,320 without heads
    assert encoder.num_parameters() == 305_368_320


def test_cli_info_prints_base_count(capsys):
    assert cli_main(["info", "--config", str(ROOT_CONFIGS / "base.yaml")]) == 0
    assert "305,368,320" in capsys.readouterr().out


def test_tiny_inherits_base_and_overrides():
    config = tiny_config()
    assert config.hidden_size == 128 and config.norm_position == "post"
    config = load_config(ModelConfig, ROOT_CONFIGS / "tiny.yaml", ["model.num_layers=3", "model.rope_theta=1e4"],
                         section="model")
    assert config.num_layers == 3 and config.rope_theta == 10000.0


@pytest.mark.parametrize("overrides, field", [
    (["model.num_heads=5"], "model.hidden_size"),
    (["model.norm_position=middle"], "model.norm_position"),
    (["model.hidden_act=relu"], "model.hidden_act"),
    (["model.num_layers=0"], "model.num_layers"),
    (["model.rope_ntk_factor=0.5"], "model.rope_ntk_factor"),
    (["model.not_a_field=1"], "model.not_a_field"),
    (["model.num_layers=two"], "model.num_layers"),
])
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(ModelConfig, ROOT_CONFIGS / "tiny.yaml", overrides, section="model")


def test_override_parsing():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["a.b"])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(ModelConfig, tmp_path / "nope.yaml")
