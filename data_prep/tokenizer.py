"""SentencePiece unigram tokenizer with the XLM-R id layout, exported as a Hugging Face fast tokenizer.

XLM-R's convention (fairseq): the sentencepiece model has <unk>=0, <s>=1, </s>=2, then its pieces; the
model-facing vocabulary puts <s>=0, <pad>=1, </s>=2, <unk>=3, shifts every other piece up by one (the
"fairseq offset") and appends <mask> as the last id. The embedding table is then padded to a multiple of
64 (250,002 -> 250,048 for XLM-R); the padding rows are never produced by the tokenizer.

We build `tokenizer.json` directly with the `tokenizers` library rather than through transformers'
`XLMRobertaConverter`, because that converter drops sentencepiece's byte fallback (characters outside the
vocabulary would become <unk> in the fast tokenizer but bytes in sentencepiece, and the ids would differ).

`train_tokenizer_from_files` is the whole step (read jsonl/txt with the shards stage's skip rules, train,
write); every output is staged in a temporary directory and installed only once it loads.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from data_prep.files import DataError, LineScan, MissingFileError, atomic_path, require_file, scan_lines
from data_prep.text import clean_text

log = logging.getLogger(__name__)

SPM_FILENAME = "sentencepiece.bpe.model"  # XLM-R's name for its (unigram) sentencepiece model
FAIRSEQ_OFFSET = 1  # spm id i (i >= 3) -> model id i + 1, because <pad> is inserted at 1
VOCAB_MULTIPLE = 64
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # model ids 0..3; <mask> is the last id
MIN_VOCAB_SIZE = 3 + 256 + 1  # <unk> <s> </s>, the 256 byte-fallback pieces, and at least one real piece
TRAINING_SUFFIXES = {".jsonl": True, ".json": True, ".txt": False}  # suffix -> one JSON object per line


@dataclass(frozen=True)
class SpecialIds:
    """The ids a model and a collator need; `padded_vocab_size` sizes the embedding table."""

    cls: int
    sep: int
    pad: int
    unk: int
    mask: int
    vocab_size: int  # ids the tokenizer can produce (mask + 1)
    padded_vocab_size: int  # vocab_size rounded up to a multiple of 64

    @property
    def all_special(self) -> tuple[int, ...]:
        return (self.cls, self.sep, self.pad, self.unk, self.mask)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def pad_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """Round up to a multiple of `multiple` (tensor-core friendly embedding and LM-head shapes)."""
    return -(-vocab_size // multiple) * multiple


def backend_tokenizer(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """The Rust `tokenizers.Tokenizer` behind a fast transformers tokenizer (batch encoding with offsets, without
    the Python wrapper's per-call cost); a slow (Python) tokenizer has none, which is a clear error here."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"tokenizer: {type(tokenizer).__name__} is not a fast (Rust-backed) tokenizer")
    return backend


def special_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialIds:
    """Read the special ids of a loaded tokenizer and check they follow the XLM-R layout."""
    ids = SpecialIds(cls=tokenizer.cls_token_id, sep=tokenizer.sep_token_id, pad=tokenizer.pad_token_id,
                     unk=tokenizer.unk_token_id, mask=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                     padded_vocab_size=pad_vocab_size(len(tokenizer)))
    expected = (0, 2, 1, 3, len(tokenizer) - 1)
    if (ids.cls, ids.sep, ids.pad, ids.unk, ids.mask) != expected:
        raise ValueError(f"tokenizer: special ids (cls, sep, pad, unk, mask) = "
                         f"{(ids.cls, ids.sep, ids.pad, ids.unk, ids.mask)}, expected the XLM-R layout {expected}")
    return ids


def train_sentencepiece(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 32000,
                        character_coverage: float = 0.9995, input_sentence_size: int = 2_000_000,
                        seed_sentencepiece_size: int = 1_000_000, num_threads: int = 2) -> Path:
    """Train a unigram sentencepiece model (byte fallback, XLM-R special layout) and return its path.

    `vocab_size` counts sentencepiece pieces (XLM-R: 250,000); the HF vocabulary is that + 2 (<pad>, <mask>).
    Training happens in a temporary directory: `out_dir` is created only when a model comes out of it.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size: {vocab_size} is below {MIN_VOCAB_SIZE} (3 specials + 256 byte pieces + 1)")
    feed = _SentenceFeed(texts)
    with tempfile.TemporaryDirectory(prefix="spm-") as tmp:
        prefix = Path(tmp) / "spm"
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(feed), model_prefix=str(prefix), model_type="unigram",
                vocab_size=vocab_size, character_coverage=character_coverage, byte_fallback=True,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # XLM-R's sentencepiece layout (no pad inside spm)
                input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
                seed_sentencepiece_size=seed_sentencepiece_size, num_threads=num_threads,
                max_sentence_length=1 << 16, minloglevel=2,
                hard_vocab_limit=False,  # tiny corpora cannot always fill the requested size
            )
        except RuntimeError as err:
            raise feed.explain(err, vocab_size) from err
        if feed.error is not None:  # the iterator failed after sentencepiece had read enough to finish
            raise feed.error
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / SPM_FILENAME
        with atomic_path(target) as staged:
            shutil.copyfile(str(prefix) + ".model", staged)
    return target


class _SentenceFeed:
    """Non-empty lines of `texts` for sentencepiece, keeping the reader's own exception.

    sentencepiece turns an exception raised by its sentence iterator into "RuntimeError: INTERNAL: ...",
    which loses the type (DataError) and reads like a sentencepiece bug; it is kept here and re-raised.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.lines, self.error = texts, 0, None

    def __iter__(self) -> Iterator[str]:
        try:
            for text in self.texts:
                for line in text.split("\n"):
                    if line.strip():
                        self.lines += 1
                        yield line
        except Exception as err:
            self.error = err
            raise

    def explain(self, err: RuntimeError, vocab_size: int) -> Exception:
        if self.error is not None:
            return self.error
        if self.lines == 0:
            return DataError("no text to train on: every input line is empty")
        if "Vocabulary size is smaller than required_chars" in str(err):
            return DataError(f"vocab_size: {vocab_size} is too small for the characters of the training text "
                             f"({str(err).split('required_chars. ')[-1].split('.')[0]}); raise it")
        return DataError(f"sentencepiece training failed on {self.lines} lines: {err}")


# ---- the tokenizer step: files -> trained HF tokenizer -----------------------------------------------------
@dataclass(frozen=True)
class TrainedTokenizer:
    """What `train_tokenizer_from_files` made: the loadable directory, its ids and what the input held."""

    directory: Path  # AutoTokenizer / load_tokenizer loads it
    special_ids: SpecialIds
    texts: int  # documents (jsonl records / txt lines) used after cleaning
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, the shards stage's reasons


def train_tokenizer_from_files(files: Iterable[str | Path], out_dir: str | Path, vocab_size: int = 32000, *,
                               text_field: str = "text", on_bad_line: str = "skip", normalization: str = "NFC",
                               max_doc_chars: int = 2_000_000, model_max_length: int = 8192,
                               num_threads: int = 2) -> TrainedTokenizer:
    """Train a sentencepiece unigram tokenizer on jsonl (field `text_field`) / txt (one text a line) files.

    Lines are read like the shards stage reads them: invalid UTF-8 / JSON lines are skipped and counted
    (`on_bad_line="raise"`: DataError naming file and line, before anything is written), texts are cleaned
    with `data_prep.text.clean_text` (missing_text, not_a_string, empty, control_only, too_long_chars are counted).
    The HF tokenizer is written to `out_dir` only once it trained and loads; on any failure nothing is
    created or changed there (an earlier tokenizer stays as it was).
    """
    if on_bad_line not in ("skip", "raise"):
        raise ValueError(f"on_bad_line: expected 'skip' or 'raise', got {on_bad_line!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size: {vocab_size} is below {MIN_VOCAB_SIZE} (3 specials + 256 byte pieces + 1)")
    paths = _training_files(files)
    scans = [scan_lines(path, jsonl=TRAINING_SUFFIXES[path.suffix.lower()], on_error=on_bad_line) for path in paths]
    reader = _TrainingTexts(scans, text_field, normalization, max_doc_chars)
    texts = iter(reader)
    first = next(texts, None)  # empty input is an error before anything is trained or written
    if first is None:
        named = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise DataError(f"{named}: no text to train on (skipped: {dict(reader.skipped)})")
    with tempfile.TemporaryDirectory(prefix="spm-model-") as tmp:
        spm_path = train_sentencepiece(itertools.chain([first], texts), tmp, vocab_size=vocab_size,
                                       num_threads=num_threads)
        out = save_hf_tokenizer(spm_path, out_dir, model_max_length=model_max_length)
    return TrainedTokenizer(directory=out, special_ids=special_ids(load_tokenizer(out)), texts=reader.texts,
                            skipped=dict(reader.skipped))


def _training_files(files: Iterable[str | Path]) -> list[Path]:
    files = [files] if isinstance(files, (str, Path)) else list(files)
    if not files:
        raise DataError("no input files to train the tokenizer on")
    paths = []
    for file in files:
        path = require_file(file)
        if path.suffix.lower() not in TRAINING_SUFFIXES:
            raise DataError(f"{path}: unsupported file type for tokenizer training "
                            f"(expected one of {sorted(TRAINING_SUFFIXES)})")
        paths.append(path)
    return paths


class _TrainingTexts:
    """Cleaned texts of scanned files; what the shards stage would skip is skipped and counted the same way."""

    def __init__(self, scans: list[LineScan], text_field: str, normalization: str, max_doc_chars: int) -> None:
        self.scans, self.text_field = scans, text_field
        self.normalization, self.max_doc_chars = normalization, max_doc_chars
        self.texts = 0
        self.skipped: Counter = Counter()
        for scan in scans:  # invalid UTF-8 / JSON lines, found by scan_lines
            self.skipped.update(scan.skipped)
            if scan.bad_lines:
                log.warning("%s: skipped %d bad lines (first: line %d)", scan.path, len(scan.bad_lines),
                            scan.bad_lines[0])

    def __iter__(self) -> Iterator[str]:
        for scan in self.scans:
            for value in self._values(scan):
                text, reason = clean_text(value, self.normalization, self.max_doc_chars)
                if reason:
                    self.skipped[reason] += 1
                    continue
                self.texts += 1
                yield text

    def _values(self, scan: LineScan) -> Iterator[object]:
        jsonl = TRAINING_SUFFIXES[scan.path.suffix.lower()]
        bad, has_field = set(scan.bad_lines), False
        with scan.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if number in bad or (jsonl and not raw.strip()):
                    continue
                if not jsonl:
                    yield raw.decode("utf-8").rstrip("\r\n")
                    continue
                record = json.loads(raw)
                has_field = has_field or self.text_field in record
                yield record.get(self.text_field)
        if jsonl and scan.record_lines and not has_field:
            raise DataError(f"{scan.path}: no record has the field {self.text_field!r}")


def load_spm_proto(spm_path: str | Path) -> model_pb2.ModelProto:
    path = Path(spm_path)
    if not path.is_file():
        raise MissingFileError(f"{path}: sentencepiece model not found")
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf raises DecodeError, but keep the path in the message either way
        raise DataError(f"{path}: not a sentencepiece model ({err})") from err
    pieces = [p.piece for p in proto.pieces[:3]]
    if pieces != ["<unk>", "<s>", "</s>"] or proto.trainer_spec.model_type != 1:
        raise DataError(f"{path}: expected an XLM-R style unigram model with <unk>, <s>, </s> at ids 0..2, "
                         f"got {pieces} (model_type {proto.trainer_spec.model_type})")
    return proto


def xlmr_unigram(pieces: list[tuple[str, float]], byte_fallback: bool, normalizer_steps: list | None = None
                 ) -> Tokenizer:
    """A `tokenizers` Unigram over `pieces` in XLM-R's id layout (<s>=0 <pad>=1 </s>=2 <unk>=3, the pieces,
    <mask> last) with sentencepiece's metaspace and XLM-R's `<s> A </s> </s> B </s>` template."""
    vocab = [(tok, 0.0) for tok in SPECIAL_TOKENS] + list(pieces) + [("<mask>", 0.0)]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=byte_fallback))
    if normalizer_steps:
        tokenizer.normalizer = normalizers.Sequence(normalizer_steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="always"),
                                           decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
                                 + [AddedToken("<mask>", special=True, normalized=False, lstrip=True)])
    return tokenizer


def build_fast_tokenizer(spm_path: str | Path) -> Tokenizer:
    """The `tokenizers` equivalent of an XLM-R style sentencepiece model, with model ids (offset applied)."""
    proto = load_spm_proto(spm_path)
    # sentencepiece: charsmap normalisation (nmt_nfkc), drop leading/trailing whitespace, collapse runs
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    return xlmr_unigram([(p.piece, p.score) for p in proto.pieces[3:]], proto.trainer_spec.byte_fallback, steps)


def save_hf_tokenizer(spm_path: str | Path, out_dir: str | Path, model_max_length: int = 8192) -> Path:
    """Write an `AutoTokenizer`-loadable directory (tokenizer.json + configs + the spm model) offline.

    The files are built and load-checked in a temporary directory first; then tokenizer.json is removed,
    the other files replaced, and tokenizer.json written last, so `out_dir` never holds a mix that loads.
    """
    out_dir = Path(out_dir)
    # Saved as the generic fast class: transformers 5 rebuilds an `XLMRobertaTokenizer` from its vocabulary on
    # load and silently drops byte fallback, so ids would no longer match sentencepiece. The layout (ids,
    # special tokens, `<s> A </s></s> B </s>`) is XLM-R's either way.
    fast = PreTrainedTokenizerFast(tokenizer_object=build_fast_tokenizer(spm_path), model_max_length=model_max_length,
                                   bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    with tempfile.TemporaryDirectory(prefix="hf-tokenizer-") as tmp:
        staged = Path(tmp)
        fast.save_pretrained(str(staged))
        shutil.copyfile(spm_path, staged / SPM_FILENAME)  # kept for provenance and sentencepiece users
        special_ids(load_tokenizer(staged))
        _install(staged, out_dir)
    return out_dir


def _install(staged: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").unlink(missing_ok=True)  # what load_tokenizer requires: gone until complete
    for source in sorted(staged.iterdir(), key=lambda p: p.name == "tokenizer.json"):
        with atomic_path(out_dir / source.name) as tmp:
            shutil.copyfile(source, tmp)


def load_tokenizer(tokenizer_dir: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer directory without touching the network; a damaged file is named."""
    path = Path(tokenizer_dir)
    tokenizer_json = path / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise MissingFileError(f"{path}: no tokenizer.json (build one with `python -m data_prep tokenizer`)")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # json, tokenizers and transformers each raise their own types
        raise DataError(f"{_damaged_file(tokenizer_json)}: not a loadable tokenizer "
                        f"({type(err).__name__}: {err})") from err


def _damaged_file(tokenizer_json: Path) -> Path:
    """The file that made loading fail: tokenizer.json if `tokenizers` rejects it, else the directory."""
    try:
        Tokenizer.from_str(tokenizer_json.read_text(encoding="utf-8"))
    except Exception:
        return tokenizer_json
    return tokenizer_json.parent


def spm_to_model_ids(processor: spm.SentencePieceProcessor, text: str) -> list[int]:
    """Reference ids: sentencepiece's own encoding, shifted into the model id space like fairseq does."""
    ids = processor.encode(text, out_type=int)
    return [3 if i == processor.unk_id() else i + FAIRSEQ_OFFSET for i in ids]
