"""Read token shards written by `data_prep.corpus.build_shards`: memory-mapped, sequence i by index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_prep.files import DataError, sha256_file

FORMAT = "longenc-token-shards/1"


class ShardReader:
    """All sequences of a shard directory as one indexable collection (nothing loaded into memory).

    `lengths[i]` and `language_ids[i]` (index into `languages`) are small host arrays that samplers use;
    `reader[i]` is a read-only uint32 view of sequence i inside a memory-mapped file.

    Token ids are range-checked without `verify`: each shard's `max_id` in the manifest against the
    tokenizer's vocabulary at open, and every sequence's ids when it is read (DataError naming the file).
    """

    def __init__(self, directory: str | Path, verify: bool = False) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"{manifest_path}: missing; the shard directory is incomplete or was never built")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{manifest_path}: unreadable manifest ({err})") from err
        if self.manifest.get("format") != FORMAT:
            raise DataError(f"{manifest_path}: field 'format' is {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.vocab_size = self._manifest_vocab_size(manifest_path)
        self.languages: list[str] = list(self.manifest["languages"])
        self._ids: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._names: list[str] = []
        lengths, language_ids = [], []
        for entry in self.manifest["shards"]:
            # shards written before max_id existed skip this check; every read still range-checks its ids
            if entry.get("max_id", -1) >= self.vocab_size:
                raise DataError(f"{manifest_path}: shard {entry['ids']} has max token id {entry['max_id']}, outside "
                                f"the tokenizer's vocabulary of {self.vocab_size} ids (built with another tokenizer?)")
            ids = self._open(entry, "ids", verify)
            offsets = self._open(entry, "offsets", verify)
            if (len(offsets) != entry["sequences"] + 1 or int(offsets[-1]) != len(ids)
                    or len(ids) != entry["tokens"]):
                raise DataError(f"{self.directory / 'shards' / entry['ids']}: size does not match the manifest "
                                f"({len(offsets) - 1} sequences / {len(ids)} tokens, manifest says "
                                f"{entry['sequences']} / {entry['tokens']})")
            sizes = np.diff(offsets)
            if int(offsets[0]) != 0 or (sizes <= 0).any():
                raise DataError(f"{self.directory / 'shards' / entry['offsets']}: offsets do not increase "
                                "(damaged shard; every sequence holds at least <s> and </s>)")
            self._ids.append(ids)
            self._offsets.append(offsets)
            self._names.append(entry["ids"])
            lengths.append(sizes.astype(np.int32))
            language_ids.append(np.full(entry["sequences"], self.languages.index(entry["lang"]), dtype=np.int16))
        self.lengths: np.ndarray = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
        self.language_ids: np.ndarray = np.concatenate(language_ids) if language_ids else np.zeros(0, np.int16)
        counts = [len(o) - 1 for o in self._offsets]
        self._shard_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _manifest_vocab_size(self, manifest_path: Path) -> int:
        vocab_size = self.manifest.get("tokenizer", {}).get("vocab_size")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise DataError(f"{manifest_path}: field 'tokenizer.vocab_size' is {vocab_size!r}, expected a positive "
                            "integer")
        return vocab_size

    def _open(self, entry: dict, kind: str, verify: bool) -> np.ndarray:
        path = self.directory / "shards" / entry[kind]
        if not path.is_file():
            raise DataError(f"{path}: shard file listed in the manifest is missing")
        if verify and sha256_file(path) != entry[f"sha256_{kind}"]:
            raise DataError(f"{path}: checksum does not match the manifest (corrupt or rewritten)")
        try:
            return np.load(path, mmap_mode="r")
        except Exception as err:  # numpy raises ValueError/OSError/EOFError for damaged files
            raise DataError(f"{path}: unreadable shard ({type(err).__name__}: {err})") from err

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} out of range (0..{len(self) - 1})")
        shard = int(np.searchsorted(self._shard_starts, index, side="right")) - 1
        local = index - int(self._shard_starts[shard])
        offsets = self._offsets[shard]
        sequence = self._ids[shard][int(offsets[local]):int(offsets[local + 1])]
        # one pass over ids that are read anyway: a damaged id fails here, naming the file, not in torch.embedding
        top = int(sequence.view(np.ndarray).max())  # the plain view halves the cost (np.memmap wraps results)
        if top >= self.vocab_size:
            raise DataError(f"{self.directory / 'shards' / self._names[shard]}: sequence {local} (index {index}) "
                            f"holds token id {top}, outside the tokenizer's vocabulary of {self.vocab_size} ids "
                            "(damaged shard: rebuild it; ShardReader(verify=True) checks the checksums)")
        return sequence

    def token_counts(self) -> dict[str, int]:
        """Tokens per language (from the manifest; languages without text map to 0)."""
        return {lang: int(stats["tokens"]) for lang, stats in self.manifest["languages"].items()}

    def indices_of(self, lang: str) -> np.ndarray:
        if lang not in self.languages:
            raise KeyError(f"language {lang!r} not in this corpus ({self.languages})")
        return np.flatnonzero(self.language_ids == self.languages.index(lang))
