"""SentencePiece unigram tokenizer with the XLM-R id layout, exported as a Hugging Face fast tokenizer.

XLM-R's convention (fairseq): the sentencepiece model has <unk>=0, <s>=1, </s>=2, then its pieces; the
model-facing vocabulary puts <s>=0, <pad>=1, </s>=2, <unk>=3, shifts every other piece up by one (the
"fairseq offset") and appends <mask> as the last id. The embedding table is then padded to a multiple of
64 (250,002 -> 250,048 for XLM-R); the padding rows are never produced by the tokenizer.

We build `tokenizer.json` directly with the `tokenizers` library rather than through transformers'
`XLMRobertaConverter`, because that converter drops sentencepiece's byte fallback (characters outside the
vocabulary would become <unk> in the fast tokenizer but bytes in sentencepiece, and the ids would differ).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPM_FILENAME = "sentencepiece.bpe.model"  # XLM-R's name for its (unigram) sentencepiece model
FAIRSEQ_OFFSET = 1  # spm id i (i >= 3) -> model id i + 1, because <pad> is inserted at 1
VOCAB_MULTIPLE = 64
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # model ids 0..3; <mask> is the last id


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
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            sentence_iterator=_nonempty_lines(texts), model_prefix=str(prefix), model_type="unigram",
            vocab_size=vocab_size, character_coverage=character_coverage, byte_fallback=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # XLM-R's sentencepiece layout (no pad inside spm)
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            seed_sentencepiece_size=seed_sentencepiece_size, num_threads=num_threads,
            max_sentence_length=1 << 16, train_extremely_large_corpus=False, minloglevel=2,
            hard_vocab_limit=False,  # tiny corpora cannot always fill the requested size
        )
        target = out_dir / SPM_FILENAME
        shutil.move(str(prefix) + ".model", target)
    return target


def _nonempty_lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def load_spm_proto(spm_path: str | Path) -> model_pb2.ModelProto:
    path = Path(spm_path)
    if not path.is_file():
        raise FileNotFoundError(f"sentencepiece model not found: {path}")
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf raises DecodeError, but keep the path in the message either way
        raise ValueError(f"{path}: not a sentencepiece model ({err})") from err
    pieces = [p.piece for p in proto.pieces[:3]]
    if pieces != ["<unk>", "<s>", "</s>"] or proto.trainer_spec.model_type != 1:
        raise ValueError(f"{path}: expected an XLM-R style unigram model with <unk>, <s>, </s> at ids 0..2, "
                         f"got {pieces} (model_type {proto.trainer_spec.model_type})")
    return proto


def build_fast_tokenizer(spm_path: str | Path) -> Tokenizer:
    """The `tokenizers` equivalent of an XLM-R style sentencepiece model, with model ids (offset applied)."""
    proto = load_spm_proto(spm_path)
    vocab = [(tok, 0.0) for tok in SPECIAL_TOKENS]
    vocab += [(p.piece, p.score) for p in proto.pieces[3:]]
    vocab += [("<mask>", 0.0)]
    tokenizer = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=proto.trainer_spec.byte_fallback))
    # sentencepiece: charsmap normalisation (nmt_nfkc), drop leading/trailing whitespace, collapse runs
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="always"),
                                           decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
                                 + [AddedToken("<mask>", special=True, normalized=False, lstrip=True)])
    return tokenizer


def save_hf_tokenizer(spm_path: str | Path, out_dir: str | Path, model_max_length: int = 8192) -> Path:
    """Write an `AutoTokenizer`-loadable directory (tokenizer.json + configs + the spm model) offline."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Saved as the generic fast class: transformers 5 rebuilds an `XLMRobertaTokenizer` from its vocabulary on
    # load and silently drops byte fallback, so ids would no longer match sentencepiece. The layout (ids,
    # special tokens, `<s> A </s></s> B </s>`) is XLM-R's either way.
    fast = PreTrainedTokenizerFast(tokenizer_object=build_fast_tokenizer(spm_path), model_max_length=model_max_length,
                                   bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    fast.save_pretrained(str(out_dir))
    if Path(spm_path).resolve() != (out_dir / SPM_FILENAME).resolve():
        shutil.copyfile(spm_path, out_dir / SPM_FILENAME)  # kept for provenance and sentencepiece users
    return out_dir


def load_tokenizer(tokenizer_dir: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer directory without touching the network."""
    path = Path(tokenizer_dir)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path} (build one with `python -m data_prep tokenizer`)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def spm_to_model_ids(processor: spm.SentencePieceProcessor, text: str) -> list[int]:
    """Reference ids: sentencepiece's own encoding, shifted into the model id space like fairseq does."""
    ids = processor.encode(text, out_type=int)
    return [3 if i == processor.unk_id() else i + FAIRSEQ_OFFSET for i in ids]
