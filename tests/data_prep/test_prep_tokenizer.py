from __future__ import annotations

import unicodedata

import pytest
import sentencepiece as spm
from prep_helpers import django_texts

from data_prep.tokenizer import (
    SPM_FILENAME,
    backend_tokenizer,
    load_tokenizer,
    pad_vocab_size,
    special_ids,
    spm_to_model_ids,
)

TRICKY = [
    "  leading and trailing  ", "tabs\tand\nnewlines", "emoji 🤖🦜 and rare ǅ ﬁ ① ｶﾀｶﾅ", "Ελληνικά עברית ไทย",
    "多  spaces  中文", "ASCII only: 12345 !?", "a", "",
]


def test_fast_ids_equal_sentencepiece_on_held_out_multilingual_text(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / SPM_FILENAME))
    # entries the tokenizer never saw (odd entries), plus scripts outside its training set
    test_set = django_texts(every=2, offset=1)[::3] + django_texts(("bn", "ka", "hy", "ta", "my", "tr"), every=4)
    # NFC first, as corpus.py does: on decomposed Indic text `tokenizers`' Precompiled normaliser and
    # sentencepiece's differ (a known upstream gap), which is not what the pipeline feeds
    test_set = [unicodedata.normalize("NFC", t) for t in test_set + TRICKY]
    assert len(test_set) > 2000
    mismatches = []
    for text in test_set:
        fast, reference = tok(text, add_special_tokens=False)["input_ids"], spm_to_model_ids(processor, text)
        if fast != reference:
            mismatches.append((text, fast, reference))
    # the only tolerated difference: Viterbi ties (equal total score, e.g. 'u'+'uuuuu' vs 'uuuuu'+'u')
    assert len(mismatches) <= len(test_set) // 1000
    for text, fast, reference in mismatches:
        score = lambda ids: sum(processor.get_score(i - 1) for i in ids)  # model id -> spm id
        assert abs(score(fast) - score(reference)) < 1e-4, text
    # byte fallback really happened somewhere (scripts absent from training) and round-trips
    emoji = tok("🦜", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in emoji and tok.decode(emoji) == "🦜"


def test_round_trip_decode(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / SPM_FILENAME))
    for text in django_texts(("ru", "zh_Hans", "ar", "hi"), every=50):
        ids = tok(text)["input_ids"]
        spm_ids = [i - 1 for i in ids[1:-1]]  # strip <s> </s>, undo the fairseq offset
        # decoding gives back the text as sentencepiece normalises it (nmt_nfkc, single spaces)
        assert tok.decode(ids, skip_special_tokens=True) == processor.decode(spm_ids)
        assert tok.unk_token_id not in ids


def test_xlmr_layout_and_templates(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    ids = special_ids(tok)
    assert (ids.cls, ids.pad, ids.sep, ids.unk) == (0, 1, 2, 3)
    assert ids.mask == len(tok) - 1 == ids.vocab_size - 1
    assert ids.padded_vocab_size % 64 == 0 and ids.padded_vocab_size >= ids.vocab_size
    a = tok("hello", add_special_tokens=False)["input_ids"]
    b = tok("world", add_special_tokens=False)["input_ids"]
    assert tok("hello")["input_ids"] == [0, *a, 2]
    assert tok("hello", "world")["input_ids"] == [0, *a, 2, 2, *b, 2]
    assert tok("<mask>", add_special_tokens=False)["input_ids"] == [ids.mask]


def test_pad_vocab_size_matches_xlmr():
    assert pad_vocab_size(250_002) == 250_048
    assert pad_vocab_size(64) == 64 and pad_vocab_size(65) == 128


def test_backend_tokenizer_is_the_fast_tokenizers_own_and_a_slow_one_is_a_clear_error(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    text = "Änderungen speichern 保存更改"
    assert backend_tokenizer(tok).encode(text, add_special_tokens=False).ids == tok(text, add_special_tokens=False)[
        "input_ids"]

    class Slow:  # a tokenizer without a Rust backend (transformers' Python tokenizers)
        pass

    with pytest.raises(TypeError, match="Slow is not a fast"):
        backend_tokenizer(Slow())
