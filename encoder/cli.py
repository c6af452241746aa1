"""Command line: `python -m encoder.cli <command> --help`.

    info   --config configs/base.yaml [key=value ...]   parameter counts of a preset
    smoke  --config configs/tiny.yaml                    forward + backward on a mixed-length batch
    demo [pipeline args]                                 the main job at toy scale (= python -m encoder.pipeline)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from data_prep.files import exit_status

from .attention import available_backends
from .batch import UnpaddedBatch
from .config import ModelConfig, load_config
from .heads import MaskedLM, Reranker, TextRepresentationModel
from .model import Encoder


def _model_config(args: argparse.Namespace) -> ModelConfig:
    return load_config(ModelConfig, args.config, args.overrides, section="model")


def cmd_info(args: argparse.Namespace) -> int:
    config = _model_config(args)
    with torch.device("meta"):  # count without allocating 300M parameters
        encoder = Encoder(config)
        mlm = MaskedLM(config)
        trm = TextRepresentationModel(config)
        reranker = Reranker(config)
    total = encoder.num_parameters()
    rows = [
        ("encoder (no heads)", total),
        ("  of which token embeddings", encoder.embeddings.word_embeddings.weight.numel()),
        ("  non-embedding", encoder.num_parameters(exclude_embeddings=True)),
        (f"MLM model ({'tied' if config.tie_word_embeddings else 'own'} decoder)", mlm_params(mlm)),
        ("TRM model (dense + sparse)", sum(p.numel() for p in trm.parameters())),
        ("reranker model", sum(p.numel() for p in reranker.parameters())),
    ]
    print(f"config: {args.config}  layers={config.num_layers} hidden={config.hidden_size} "
          f"heads={config.num_heads} ffn={config.intermediate_size} vocab={config.vocab_size} "
          f"max_positions={config.max_position_embeddings} norm={config.norm_position}-LN "
          f"rope_theta={config.rope_theta:g}")
    for name, count in rows:
        print(f"{name:<30} {count:>15,}")
    print(f"attention backends available on cpu: {', '.join(available_backends('cpu'))}")
    return 0


def mlm_params(model: torch.nn.Module) -> int:
    # parameters() already de-duplicates a tied decoder weight
    return sum(p.numel() for p in model.parameters())


def cmd_smoke(args: argparse.Namespace) -> int:
    config = _model_config(args)
    torch.manual_seed(args.seed)
    model = MaskedLM(config)
    lengths = [1, 7, 129, 300, 64]
    generator = torch.Generator().manual_seed(args.seed)
    seqs = [torch.randint(5, config.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    labels = [[t if (i % 3 == 0) else -100 for i, t in enumerate(s)] for s in seqs]
    batch = UnpaddedBatch.from_sequences(seqs, labels=labels)
    start = time.perf_counter()
    out = model(batch)
    out.loss.backward()
    elapsed = time.perf_counter() - start
    backend = model.encoder.resolved_attention_backend()
    print(f"smoke: {len(lengths)} sequences, {batch.num_tokens} tokens packed (no padding), "
          f"backend={backend}, MLM loss {out.loss.item():.3f} on {out.num_masked} masked tokens, "
          f"forward+backward {elapsed * 1000:.0f} ms")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str, default_config: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=default_config, help=f"YAML preset (default {default_config})")
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.num_layers=4")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(fn=fn)
        return p

    add("info", cmd_info, "print parameter counts of a preset", "configs/base.yaml")
    add("smoke", cmd_smoke, "forward + backward of a mixed-length unpadded batch", "configs/tiny.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from .pipeline import main as pipeline_main  # noqa: PLC0415

        return pipeline_main(argv[1:])
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.fn(args), (ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
