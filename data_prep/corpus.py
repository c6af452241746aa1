"""Corpus -> token shards: read text per language through `datasets`, clean, tokenize, chunk, write shards.

Layout of an output directory:
    shards/<lang>-00000.ids.npy      uint32 [N_tokens]   every sequence's ids, concatenated
    shards/<lang>-00000.offsets.npy  int64  [N_seq + 1]  start of each sequence (offsets[-1] == N_tokens)
    manifest.json                    counts per language (docs, tokens, skips by reason), shard checksums

Every sequence is `<s> ... </s>` and at most `max_length` tokens: longer documents are split into chunks.
Config, sources and tokenizer are checked before anything is written; the new shards are built in a
temporary directory inside `out_dir` and swapped in only when the build succeeded (the old manifest is
removed first and the new one written last), so bad input never touches the shards of an earlier run and
a crash never leaves shards that a reader would accept as complete.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_prep.files import (
    DataError,
    MissingFileError,
    atomic_path,
    copy_without_lines,
    require_file,
    scan_lines,
    sha256_file,
    write_json,
)
from data_prep.shards import FORMAT, ShardReader
from data_prep.text import NORMAL_FORMS, clean_text
from data_prep.tokenizer import backend_tokenizer, load_tokenizer, special_ids

log = logging.getLogger(__name__)
__all__ = ["CorpusSource", "ShardConfig", "ShardReader", "build_shards", "clean_text", "chunk_ids"]

LOCAL_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name" as the hub spells dataset ids


@dataclass(frozen=True)
class CorpusSource:
    """One input for one language: a local jsonl/json/parquet/txt file (or glob), or a hub dataset name."""

    lang: str
    path: str
    text_field: str = "text"
    split: str = "train"
    hub_config: str | None = None
    sample_by: str = "line"  # txt only: "line", "paragraph" or "document" (whole file)

    @property
    def kind(self) -> str:
        suffix = Path(self.path).suffix.lower()
        return LOCAL_KINDS.get(suffix, "hub")


@dataclass(frozen=True)
class ShardConfig:
    max_length: int = 8192  # tokens per sequence including <s> and </s>
    normalization: str = "NFC"  # NFC keeps compatibility characters (NFKC folds e.g. full-width forms)
    max_doc_chars: int = 2_000_000  # longer documents are skipped (counted): almost always dumps or junk
    min_tokens: int = 1  # content tokens a chunk needs to be kept
    shard_tokens: int = 64 << 20  # tokens per shard file (256 MiB of uint32)
    batch_size: int = 256  # documents per tokenizer call
    num_proc: int = 1  # >1: `datasets.map` workers; 1: the Rust tokenizer's own threads
    on_bad_line: str = "skip"  # invalid UTF-8 / JSON lines: "skip" (counted) or "raise"
    dedup: bool = True  # drop exact duplicates (after cleaning) within a language

    def __post_init__(self) -> None:
        minimums = {"max_length": 3, "max_doc_chars": 1, "min_tokens": 1, "shard_tokens": 1, "batch_size": 1,
                    "num_proc": 1}  # max_length 3: <s>, one content token, </s>
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"ShardConfig.{name}: {value!r} is not an integer >= {minimum}")
        if self.normalization not in NORMAL_FORMS:
            raise ValueError(f"ShardConfig.normalization: {self.normalization!r} is not one of {NORMAL_FORMS}")
        if self.on_bad_line not in ("skip", "raise"):
            raise ValueError(f"ShardConfig.on_bad_line: expected 'skip' or 'raise', got {self.on_bad_line!r}")


@dataclass
class LanguageStats:
    docs: int = 0  # documents kept
    sequences: int = 0
    tokens: int = 0
    chunked_docs: int = 0  # documents longer than max_length, split into several sequences
    skipped: Counter = field(default_factory=Counter)  # reason -> count (documents or lines)
    sources: list[str] = field(default_factory=list)


def chunk_ids(ids: Sequence[int], max_length: int, cls_id: int, sep_id: int, min_tokens: int = 1) -> list[list[int]]:
    """Split content ids into `<s> chunk </s>` sequences of at most `max_length` tokens."""
    width = max_length - 2
    if width < 1:
        raise ValueError(f"max_length: {max_length} leaves no room for content between <s> and </s>")
    chunks = []
    for start in range(0, len(ids), width):
        piece = list(ids[start:start + width])
        if len(piece) >= min_tokens:
            chunks.append([cls_id, *piece, sep_id])
    return chunks


# ---- reading ---------------------------------------------------------------------------------------------
def source_files(source: CorpusSource) -> list[Path]:
    """The local files of a source (checked to exist and be readable); [] for a hub dataset name."""
    kind = source.kind
    if kind == "hub":
        if Path(source.path).exists():
            raise DataError(f"{source.path}: unknown file type (expected one of {sorted(LOCAL_KINDS)})")
        looks_local = Path(source.path.split("/")[0]).is_dir()  # "data/de.jsonll" is a typo, not org "data"
        if looks_local or not _HUB_NAME.fullmatch(source.path):
            raise MissingFileError(f"{source.path}: input file not found (and not a hub dataset name 'org/name')")
        return []
    if any(c in source.path for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(source.path, recursive=True))
        if not files:
            raise DataError(f"{source.path}: no file matches this pattern")
    else:
        files = [Path(source.path)]
    return [_require_parquet(path) if kind == "parquet" else require_file(path) for path in files]


def load_source(source: CorpusSource, config: ShardConfig, workdir: Path, stats: LanguageStats):
    """A `datasets.Dataset` with the source's rows; bad lines of local text files counted in `stats`."""
    import datasets

    kind = source.kind
    if kind == "hub":
        try:
            return datasets.load_dataset(source.path, source.hub_config, split=source.split)
        except Exception as err:  # offline, unknown name, ...: the hub raises many types
            raise DataError(f"{source.path}: could not load hub dataset ({type(err).__name__}: {err})") from err
    data_files = []
    for path in source_files(source):
        if kind != "parquet":
            scan = scan_lines(path, jsonl=kind == "json", on_error=config.on_bad_line)
            stats.skipped.update(scan.skipped)
            if scan.bad_lines:
                log.warning("%s: skipped %d bad lines (first: line %d)", path, len(scan.bad_lines),
                            scan.bad_lines[0])
                path = copy_without_lines(path, workdir / f"clean-{len(data_files)}-{path.name}", scan.bad_lines)
            if scan.lines == 0 or (kind == "json" and not scan.record_lines):
                continue  # nothing to read, and `datasets` cannot infer the columns of an empty jsonl
        data_files.append(str(path))
    if not data_files:
        return None
    kwargs = {"sample_by": source.sample_by} if kind == "text" else {}
    try:
        dataset = datasets.load_dataset(kind, data_files=data_files, split="train",
                                        cache_dir=str(workdir / "hf-cache"), **kwargs)
    except Exception as err:
        raise DataError(f"{source.path}: could not read as {kind} ({type(err).__name__}: {err})") from err
    if source.text_field not in dataset.column_names:
        raise DataError(f"{source.path}: no field {source.text_field!r} (columns: {dataset.column_names})")
    return dataset


def _require_parquet(path: Path) -> Path:
    import pyarrow.parquet as pq

    require_file(path)
    try:
        pq.read_metadata(path)
    except Exception as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    return path


def _prepare_batch(batch: dict, text_field: str, tokenizer, config: ShardConfig) -> dict:
    """datasets.map function: clean, skip-reason, digest (for dedup) and content ids of each document."""
    ids, reasons, digests = [], [], []
    texts = []
    for raw in batch[text_field]:
        text, reason = clean_text(raw, config.normalization, config.max_doc_chars)
        reasons.append(reason)
        digests.append(hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest() if text else "")
        texts.append(text)
    encodings = backend_tokenizer(tokenizer).encode_batch_fast(texts, add_special_tokens=False)
    for text, encoding in zip(texts, encodings):
        ids.append(encoding.ids if text else [])
    return {"ids": ids, "skip": reasons, "digest": digests}


# ---- writing ---------------------------------------------------------------------------------------------
class ShardWriter:
    """Buffers sequences of one language and writes `.ids.npy` / `.offsets.npy` pairs atomically."""

    def __init__(self, shard_dir: Path, lang: str, shard_tokens: int) -> None:
        self.shard_dir, self.lang, self.shard_tokens = shard_dir, lang, shard_tokens
        self.buffer: list[np.ndarray] = []
        self.buffered_tokens = 0
        self.files: list[dict] = []

    def add(self, sequence: list[int]) -> None:
        self.buffer.append(np.asarray(sequence, dtype=np.uint32))
        self.buffered_tokens += len(sequence)
        if self.buffered_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"{self.lang}-{len(self.files):05d}"
        lengths = np.fromiter((len(s) for s in self.buffer), dtype=np.int64, count=len(self.buffer))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(self.buffer)
        # the reader compares max_id with the vocabulary at open, without reading the shard
        entry = {"lang": self.lang, "sequences": len(lengths), "tokens": int(offsets[-1]), "max_id": int(ids.max())}
        for suffix, array in (("ids", ids), ("offsets", offsets)):
            path = self.shard_dir / f"{name}.{suffix}.npy"
            with atomic_path(path) as tmp, tmp.open("wb") as handle:
                np.save(handle, array)
            entry[suffix] = path.name
            entry[f"sha256_{suffix}"] = sha256_file(path)
        self.files.append(entry)
        self.buffer, self.buffered_tokens = [], 0


def build_shards(sources: Sequence[CorpusSource], tokenizer_dir: str | Path, out_dir: str | Path,
                 config: ShardConfig = ShardConfig(), languages: Sequence[str] | None = None,
                 progress: bool = True) -> dict:
    """Tokenize `sources` into shards under `out_dir` and return the manifest (also written last).

    `languages` lists languages that must appear in the manifest even when no source gives them text
    (they are reported under `empty_languages` instead of silently vanishing from the mix).
    Everything is checked and built before `out_dir/shards` and `out_dir/manifest.json` are replaced:
    a failed build leaves an earlier build there byte for byte (and creates no `out_dir` of its own).
    """
    if not sources:
        raise DataError("sources: empty corpus (no input given)")
    if not isinstance(config, ShardConfig):
        raise TypeError(f"config: expected a ShardConfig, got {type(config).__name__}")
    for source in sources:
        source_files(source)  # a typo in a path fails here, before any output is touched
    tokenizer = load_tokenizer(tokenizer_dir)
    specials = special_ids(tokenizer)
    out_dir = Path(out_dir)
    with _new_directory(out_dir), tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as build:
        staging = Path(build)
        (staging / "shards").mkdir()
        started = time.perf_counter()
        files, stats = _build(sources, tokenizer, specials, config, languages, staging, progress)
        seconds = time.perf_counter() - started
        manifest = _manifest(files, stats, specials, tokenizer_dir, config, seconds)
        _swap_in(staging, out_dir, manifest)
    return manifest


def _build(sources: Sequence[CorpusSource], tokenizer, specials, config: ShardConfig,
           languages: Sequence[str] | None, staging: Path, progress: bool) -> tuple[list[dict], dict]:
    all_langs = list(dict.fromkeys([*(languages or []), *(s.lang for s in sources)]))
    stats = {lang: LanguageStats() for lang in all_langs}
    files: list[dict] = []
    (staging / "work").mkdir()
    for lang in all_langs:
        writer = ShardWriter(staging / "shards", lang, config.shard_tokens)
        seen: set[str] = set()
        for source in (s for s in sources if s.lang == lang):
            stats[lang].sources.append(source.path)
            dataset = load_source(source, config, staging / "work", stats[lang])
            if dataset is not None:
                _write_source(dataset, source, tokenizer, specials, config, writer, seen, stats[lang], progress)
        writer.flush()
        files.extend(writer.files)
    return files, stats


@contextlib.contextmanager
def _new_directory(path: Path) -> Iterator[None]:
    """Create `path` (and missing parents) for the block; remove what was created if the block fails."""
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for directory in created:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _swap_in(staging: Path, out_dir: Path, manifest: dict) -> None:
    """Replace out_dir's shards by the staged ones: old manifest removed first, new manifest written last."""
    manifest_path, shard_dir = out_dir / "manifest.json", out_dir / "shards"
    manifest_path.unlink(missing_ok=True)  # from here until the end no manifest vouches for the shards
    if shard_dir.is_dir() and not shard_dir.is_symlink():
        os.replace(shard_dir, staging / "replaced-shards")  # deleted with the staging directory
    elif shard_dir.exists() or shard_dir.is_symlink():
        shard_dir.unlink()
    os.replace(staging / "shards", shard_dir)
    write_json(manifest_path, manifest)


def _write_source(dataset, source: CorpusSource, tokenizer, specials, config: ShardConfig,
                  writer: ShardWriter, seen: set[str], stats: LanguageStats, progress: bool) -> None:
    prepared = dataset.map(_prepare_batch, batched=True, batch_size=config.batch_size,
                           num_proc=config.num_proc if config.num_proc > 1 else None,
                           remove_columns=dataset.column_names, desc=f"tokenize {source.lang}",
                           fn_kwargs={"text_field": source.text_field, "tokenizer": tokenizer, "config": config})
    bar = tqdm(total=len(prepared), desc=f"shards {source.lang}", unit="doc", disable=not progress)
    for rows in _iter_batches(prepared, 1024):
        for ids, reason, digest in zip(rows["ids"], rows["skip"], rows["digest"]):
            if not reason and config.dedup:
                reason = "duplicate" if digest in seen else ""
                seen.add(digest)
            if not reason and len(ids) < config.min_tokens:
                reason = "no_tokens"
            if reason:
                stats.skipped[reason] += 1
                continue
            chunks = chunk_ids(ids, config.max_length, specials.cls, specials.sep, config.min_tokens)
            stats.docs += 1
            stats.chunked_docs += len(chunks) > 1
            for chunk in chunks:
                writer.add(chunk)
                stats.sequences += 1
                stats.tokens += len(chunk)
        bar.update(len(rows["skip"]))
    bar.close()


def _iter_batches(dataset, size: int) -> Iterator[dict]:
    for start in range(0, len(dataset), size):
        yield dataset[start:start + size]


def _manifest(files: list[dict], stats: dict[str, LanguageStats], specials, tokenizer_dir, config: ShardConfig,
              seconds: float) -> dict:
    total_tokens = sum(s.tokens for s in stats.values())
    skipped = sum((s.skipped for s in stats.values()), Counter())
    if total_tokens == 0:
        paths = [path for s in stats.values() for path in s.sources]
        named = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise DataError(f"{named}: empty corpus, no text survived cleaning in any language (skipped: "
                        f"{dict(skipped)}); nothing written")
    empty = [lang for lang, s in stats.items() if s.tokens == 0]
    for lang in empty:
        warnings.warn(f"language {lang!r}: no text (skipped: {dict(stats[lang].skipped)}); "
                      "it is listed under empty_languages and gets no samples", stacklevel=3)
    tokenizer_json = Path(tokenizer_dir) / "tokenizer.json"
    manifest = {
        "format": FORMAT,
        "tokenizer": {"dir": str(tokenizer_dir), "sha256": sha256_file(tokenizer_json), **specials.to_dict()},
        "config": asdict(config),
        "languages": {lang: {**asdict(s), "skipped": dict(s.skipped)} for lang, s in stats.items()},
        "empty_languages": empty,
        "totals": {"docs": sum(s.docs for s in stats.values()), "sequences": sum(s.sequences for s in stats.values()),
                   "tokens": total_tokens, "skipped": dict(skipped)},
        "build": {"seconds": round(seconds, 3), "tokens_per_second": round(total_tokens / max(seconds, 1e-9))},
        "shards": files,
    }
    return manifest
