"""Command line of the exporters: `python -m encoder.export <command> --help`.

    export      a trained checkpoint (our state dict) -> HF directory (+ --push-to-hub NAME)
    import-mgte a published mGTE directory (new-impl) -> HF directory served by our code and kernels
    to-mgte     a trained checkpoint -> new-impl layout (config.json + model.safetensors)
    push        upload an existing export directory
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from data_prep.files import exit_status

from ..config import ModelConfig, load_config, read_yaml
from ..heads import MaskedLM, Reranker, TextRepresentationModel
from .hf import export_pretrained
from .hub import HubUnavailable, push_to_hub
from .mgte import load_mgte, save_mgte

EXIT_OFFLINE = 3


def load_task_model(kind: str, checkpoint: Path, config: ModelConfig,
                    special_token_ids: tuple[int, ...] = (0, 1, 2, 3)) -> torch.nn.Module:
    """Our task model from a state dict file (.safetensors, or a torch file holding it or {"model": it})."""
    model = {"mlm": lambda: MaskedLM(config), "trm": lambda: TextRepresentationModel(config, special_token_ids),
             "reranker": lambda: Reranker(config)}[kind]()
    if checkpoint.suffix == ".safetensors":
        state = load_file(str(checkpoint))
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    if kind == "reranker" and not any(k.startswith("head.pooler.") for k in state):
        model = Reranker(config, use_pooler=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "head.decoder_weight")]
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return model.eval()


def _push(args: argparse.Namespace, out: Path) -> int:
    if not args.push_to_hub:
        return 0
    try:
        url = push_to_hub(out, args.push_to_hub, private=args.private)
    except HubUnavailable as err:
        print(f"export written to {out}, but not uploaded to {args.push_to_hub}: {err}. Upload later with "
              f"`python -m encoder.export push {out} {args.push_to_hub}`.", file=sys.stderr)
        return EXIT_OFFLINE
    print(f"uploaded {out} to {url}")
    return 0


def _card_inputs(args: argparse.Namespace) -> dict:
    training = read_yaml(args.training_config) if args.training_config else None
    results = json.loads(Path(args.eval_results).read_text(encoding="utf-8")) if args.eval_results else None
    return {"training_config": training, "eval_results": results}


def cmd_export(args: argparse.Namespace) -> int:
    config = load_config(ModelConfig, args.config, args.overrides, section="model")
    model = load_task_model(args.kind, Path(args.checkpoint), config)
    out = export_pretrained(model, args.out, args.tokenizer, overwrite=args.overwrite, model_name=args.push_to_hub,
                            include_kernels=False if args.no_kernels else None, **_card_inputs(args))
    print(f"exported {args.kind} model to {out}")
    return _push(args, out)


def cmd_import_mgte(args: argparse.Namespace) -> int:
    source = Path(args.source)
    model = load_mgte(source, kind=args.kind)
    tokenizer = args.tokenizer or (source if (source / "tokenizer.json").is_file() else None)
    out = export_pretrained(model, args.out, tokenizer, overwrite=args.overwrite, model_name=args.push_to_hub,
                            include_kernels=False if args.no_kernels else None, **_card_inputs(args))
    print(f"imported {source} and exported it to {out}")
    return _push(args, out)


def cmd_to_mgte(args: argparse.Namespace) -> int:
    config = load_config(ModelConfig, args.config, args.overrides, section="model")
    out = save_mgte(load_task_model(args.kind, Path(args.checkpoint), config), args.out, overwrite=args.overwrite)
    print(f"wrote new-impl layout to {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    args.private = getattr(args, "private", False)
    return _push(args, Path(args.folder))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, hub: bool = True) -> None:
        p.add_argument("--out", required=True, help="output directory (written atomically)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        if hub:
            p.add_argument("--push-to-hub", metavar="NAME", help="upload to this hub repo after writing")
            p.add_argument("--private", action="store_true", help="create the hub repo private")
            p.add_argument("--training-config", help="YAML of the training run, for the model card")
            p.add_argument("--eval-results", help='JSON {"task": {"metric": value}}, for the model card')
            p.add_argument("--no-kernels", action="store_true", help="do not bundle the Triton kernels")

    def checkpoint_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kind", required=True, choices=("mlm", "trm", "reranker"))
        p.add_argument("--checkpoint", required=True, help="our state dict (.safetensors or torch file)")
        p.add_argument("--config", required=True, help="YAML preset of the model (model: section)")
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.num_layers=4")

    p = sub.add_parser("export", help="trained checkpoint -> HF directory")
    checkpoint_args(p)
    p.add_argument("--tokenizer", help="tokenizer directory (data_prep/tokenizer.py output)")
    common(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("import-mgte", help="published mGTE directory -> HF directory with our code")
    p.add_argument("source", help="local directory with config.json + model.safetensors / pytorch_model.bin")
    p.add_argument("--kind", choices=("mlm", "trm", "reranker"), help="default: inferred from the weights")
    p.add_argument("--tokenizer", help="default: the source directory when it holds tokenizer.json")
    common(p)
    p.set_defaults(fn=cmd_import_mgte)

    p = sub.add_parser("to-mgte", help="trained checkpoint -> new-impl layout")
    checkpoint_args(p)
    common(p, hub=False)
    p.set_defaults(fn=cmd_to_mgte)

    p = sub.add_parser("push", help="upload an existing export directory")
    p.add_argument("folder")
    p.add_argument("push_to_hub", metavar="NAME")
    p.set_defaults(fn=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.fn(args), (ValueError, FileNotFoundError, FileExistsError))
