"""Builders shared by the export tests: a tiny XLM-R-layout tokenizer, multilingual texts, non-trivial models."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from fresh_python import run_isolated
from transformers import PreTrainedTokenizerFast

from data_prep.tokenizer import xlmr_unigram
from encoder.config import ModelConfig, load_config
from encoder.heads import MaskedLM, Reranker, TextRepresentationModel

ROOT = Path(__file__).resolve().parents[3]

# several scripts; the last one is longer than 512 tokens with the character-level tokenizer below
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. " * 12,
]
PAIRS = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[6]), (TEXTS[3], TEXTS[7]), ("short", TEXTS[4])]


def build_tokenizer(texts: list[str] = TEXTS) -> PreTrainedTokenizerFast:
    """Character unigram with byte fallback and XLM-R's special layout (<s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last)."""
    chars = sorted({c for t in texts for c in t.replace(" ", "")})
    pieces = [("▁", -2.0)] + [(c, -5.0) for c in chars] + [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    tokenizer = xlmr_unigram(pieces, byte_fallback=True)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=8192, bos_token="<s>",
                                   eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    config = load_config(ModelConfig, ROOT / "configs" / "tiny.yaml", section="model")
    config.vocab_size = -(-vocab_size // 64) * 64
    config.num_layers = 2
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    return config


def perturb_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LayerNorm scales/shifts and biases: zero biases and unit norms would hide layout mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif param.dim() == 1:  # LayerNorm weights
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.add_(0.02 * noise)
    return model.eval()


def make_model(kind: str, config: ModelConfig, seed: int = 0, special_ids: tuple[int, ...] = (0, 1, 2, 3)):
    torch.manual_seed(seed)
    if kind == "mlm":
        model = MaskedLM(config)
    elif kind == "trm":
        model = TextRepresentationModel(config, special_token_ids=special_ids)
    else:
        model = Reranker(config, use_pooler=True)
    model.encoder.set_attention_backend("sdpa")
    return perturb_(model, seed)


def run_fresh(script: str, args: list[str], tmp: Path, timeout: int = 240,
              extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the script file `script` from an empty cwd, with our dependencies but not the repository importable.
    The script's own folder (tests/encoder/export) is on its sys.path, the repository root is not."""
    cwd = tmp / "fresh_cwd"
    cwd.mkdir(exist_ok=True)
    return run_isolated([script, *args], cwd, timeout, {"HF_HOME": str(tmp / "hf_home"), **(extra_env or {})})
