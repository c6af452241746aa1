from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.corpus import CorpusSource, ShardConfig, ShardReader, build_shards, chunk_ids, clean_text
from data_prep.files import DataError
from data_prep.tokenizer import load_tokenizer

CONFIG = ShardConfig(max_length=32, shard_tokens=500)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_clean_text():
    assert clean_text("  a\x00b \r\n\n\x07\x08\n c ") == ("ab\nc", "")
    assert clean_text("\x01\x02\n\x03") == ("", "control_only")
    assert clean_text("   \n ") == ("", "empty")
    assert clean_text(None) == ("", "missing_text")
    assert clean_text("ｶﾀｶﾅ", "NFKC")[0] == "カタカナ"
    assert clean_text("e\u0301")[0] == "\u00e9"  # NFC composes


def test_chunk_ids_respects_max_length():
    chunks = chunk_ids(list(range(10, 80)), max_length=32, cls_id=0, sep_id=2)
    assert [len(c) for c in chunks] == [32, 32, 12]
    assert all(c[0] == 0 and c[-1] == 2 for c in chunks)
    assert [t for c in chunks for t in c[1:-1]] == list(range(10, 80))


def test_shards_round_trip_and_manifest(tmp_path, tokenizer_dir):
    ru = _jsonl(tmp_path / "ru.jsonl", [{"text": f"Привет, мир номер {i}. " * (1 + i % 9)} for i in range(60)]
                + [{"text": "Привет, мир номер 0. "}, {"text": ""}, {"other": 1}, {"text": "\x01\x02"}])
    de = tmp_path / "de.txt"
    de.write_text("Hallo Welt\n\nNoch eine Zeile hier\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="language 'fr': no text"):
        manifest = build_shards([CorpusSource("ru", str(ru)), CorpusSource("de", str(de))], tokenizer_dir,
                                tmp_path / "out", CONFIG, languages=["fr", "ru", "de"], progress=False)
    ru_stats = manifest["languages"]["ru"]
    assert ru_stats["docs"] == 60
    assert ru_stats["skipped"] == {"duplicate": 1, "empty": 1, "missing_text": 1, "control_only": 1}
    assert ru_stats["chunked_docs"] > 0 and manifest["languages"]["de"]["docs"] == 2
    assert manifest["empty_languages"] == ["fr"] and manifest["languages"]["fr"]["tokens"] == 0
    assert len([s for s in manifest["shards"] if s["lang"] == "ru"]) > 1  # rolled over shard_tokens

    reader = ShardReader(tmp_path / "out", verify=True)
    assert len(reader) == manifest["totals"]["sequences"] and reader.lengths.sum() == manifest["totals"]["tokens"]
    assert reader.lengths.max() <= 32
    tok = load_tokenizer(tokenizer_dir)
    de_ids = reader.indices_of("de")
    assert tok.decode(reader[int(de_ids[0])], skip_special_tokens=True) == "Hallo Welt"
    # a chunked document reassembles into its tokens
    expected = tok("Привет, мир номер 8. " * 9, add_special_tokens=False)["input_ids"]
    got = [t for i in reader.indices_of("ru") for t in reader[int(i)][1:-1]]
    assert " ".join(map(str, expected)) in " ".join(map(str, got))
    assert all(reader[i][0] == 0 and reader[i][-1] == 2 for i in range(len(reader)))


def test_bad_inputs_are_counted_or_named(tmp_path, tokenizer_dir):
    txt = tmp_path / "mixed.txt"
    txt.write_bytes(b"good line\n" + b"bad \xff byte\n" + b"x" * 10_000_000 + b"\nlast line\n")
    manifest = build_shards([CorpusSource("de", str(txt))], tokenizer_dir, tmp_path / "out",
                            ShardConfig(max_length=32, max_doc_chars=1_000_000), progress=False)
    assert manifest["languages"]["de"]["skipped"] == {"invalid_utf8": 1, "too_long_chars": 1}
    assert manifest["languages"]["de"]["docs"] == 2

    with pytest.raises(DataError, match=r"mixed.txt:2: invalid_utf8"):
        build_shards([CorpusSource("de", str(txt))], tokenizer_dir, tmp_path / "strict",
                     ShardConfig(on_bad_line="raise"), progress=False)
    with pytest.raises(DataError, match=r"missing.jsonl: input file not found"):
        build_shards([CorpusSource("de", str(tmp_path / "missing.jsonl"))], tokenizer_dir, tmp_path / "o2")
    wrong_field = _jsonl(tmp_path / "f.jsonl", [{"body": "text"}])
    with pytest.raises(DataError, match=r"f.jsonl: no field 'text'"):
        build_shards([CorpusSource("de", str(wrong_field))], tokenizer_dir, tmp_path / "o3", progress=False)
    bad_json = tmp_path / "b.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b.jsonl:2: invalid_json"):
        build_shards([CorpusSource("de", str(bad_json))], tokenizer_dir, tmp_path / "o4",
                     ShardConfig(on_bad_line="raise"), progress=False)


def test_empty_corpus_writes_no_manifest(tmp_path, tokenizer_dir):
    empty = _jsonl(tmp_path / "e.jsonl", [{"text": " "}, {"text": "\x00"}])
    with pytest.raises(DataError, match="empty corpus"):
        build_shards([CorpusSource("de", str(empty))], tokenizer_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(DataError, match="manifest.json: missing"):
        ShardReader(tmp_path / "out")


def test_damaged_shards_are_named(tmp_path, tokenizer_dir):
    src = _jsonl(tmp_path / "a.jsonl", [{"text": f"Satz Nummer {i} ist hier." * 3} for i in range(40)])
    build_shards([CorpusSource("de", str(src))], tokenizer_dir, tmp_path / "out", CONFIG, progress=False)
    shard = sorted((tmp_path / "out" / "shards").glob("*.ids.npy"))[0]
    ShardReader(tmp_path / "out", verify=True)
    shard.write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"{shard.name}: unreadable shard"):
        ShardReader(tmp_path / "out")
    with pytest.raises(DataError, match=rf"{shard.name}: checksum does not match"):
        ShardReader(tmp_path / "out", verify=True)
    shard.unlink()
    with pytest.raises(DataError, match=rf"{shard.name}: shard file listed in the manifest is missing"):
        ShardReader(tmp_path / "out")
    np.save(shard, np.zeros(3, np.uint32))  # readable but the wrong size
    with pytest.raises(DataError, match="does not match the manifest"):
        ShardReader(tmp_path / "out")
