"""Issue 17, point 11: tokenizer training on bad input names file and line, skips like the shards stage,
leaves nothing behind on failure; a damaged tokenizer.json is named."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from prep_helpers import django_texts

from data_prep.__main__ import main
from data_prep.files import DataError
from data_prep.tokenizer import load_tokenizer, train_tokenizer_from_files

VOCAB = 400


def _good_rows(lang: str = "de") -> list[dict]:
    return [{"text": text, "lang": lang} for text in django_texts((lang,), every=3)]


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def mlm_dir(tmp_path) -> Path:
    """An `mlm/` directory as `--data` gives it, with one malformed and one non-UTF-8 line in de.jsonl."""
    mlm = tmp_path / "mlm"
    mlm.mkdir()
    rows = [json.dumps(r, ensure_ascii=False).encode() for r in _good_rows("de")]
    _write(mlm / "de.jsonl", [rows[0], b'{"text": "kaputt', rows[1], b'{"text": "bad \xff byte"}', *rows[2:],
                              b'{"lang": "de"}', b'{"text": 7}', b'{"text": " \\u0001 "}', b"[1, 2]", b""])
    _write(mlm / "fr.jsonl", [json.dumps(r, ensure_ascii=False).encode() for r in _good_rows("fr")])
    return mlm


def test_bad_lines_are_skipped_counted_and_named(mlm_dir, tmp_path, caplog):
    files = sorted(mlm_dir.glob("*.jsonl"))
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        result = train_tokenizer_from_files(files, tmp_path / "tok", vocab_size=VOCAB)
    # the same reasons the shards stage counts
    assert result.skipped == {"invalid_json": 2, "invalid_utf8": 1, "missing_text": 1, "not_a_string": 1,
                              "control_only": 1}
    assert result.texts == len(_good_rows("de")) + len(_good_rows("fr"))
    assert result.directory == tmp_path / "tok"
    assert result.special_ids.vocab_size == len(load_tokenizer(result.directory))
    assert "de.jsonl" in caplog.text and "line 2" in caplog.text
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json"]
    assert not list(tmp_path.rglob("spm*")) and not list(tmp_path.rglob(".*tmp*"))


def test_strict_mode_names_file_and_line_and_writes_nothing(mlm_dir, tmp_path):
    with pytest.raises(DataError, match=r"de.jsonl:2: invalid_json"):
        train_tokenizer_from_files([mlm_dir / "de.jsonl"], tmp_path / "tok", vocab_size=VOCAB, on_bad_line="raise")
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("content", [b"", b"\n\n", b'{"text": ""}\n{"text": "\\u0000"}\n', b"{broken\n"])
def test_empty_input_is_a_clear_error_and_leaves_nothing(tmp_path, content):
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(content)
    with pytest.raises(DataError, match=r"e.jsonl.*no text to train on"):
        train_tokenizer_from_files([empty], tmp_path / "tok", vocab_size=VOCAB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]


def test_input_errors_before_training(tmp_path, mlm_dir):
    with pytest.raises(DataError, match=r"typo.jsonl: input file not found"):
        train_tokenizer_from_files([mlm_dir / "de.jsonl", tmp_path / "typo.jsonl"], tmp_path / "tok")
    with pytest.raises(DataError, match="no input files"):
        train_tokenizer_from_files([], tmp_path / "tok")
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"x.parquet: unsupported file type"):
        train_tokenizer_from_files([parquet], tmp_path / "tok")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer_from_files([mlm_dir / "de.jsonl"], tmp_path / "tok", vocab_size=100)
    assert not (tmp_path / "tok").exists()


def test_failed_retraining_keeps_the_previous_tokenizer(mlm_dir, tmp_path, capsys):
    out = tmp_path / "tok"
    train_tokenizer_from_files([mlm_dir / "fr.jsonl"], out, vocab_size=VOCAB)
    before = _snapshot(out)
    empty = _write(tmp_path / "empty.jsonl", [])
    assert main(["tokenizer", "--input", str(empty), "--out", str(out), "--vocab-size", str(VOCAB)]) == 2
    assert main(["tokenizer", "--input", str(mlm_dir / "de.jsonl"), "--out", str(out), "--on-bad-line", "raise"]) == 2
    assert _snapshot(out) == before
    err = capsys.readouterr().err
    assert "empty.jsonl" in err and "de.jsonl:2: invalid_json" in err
    assert main(["tokenizer", "--input", str(mlm_dir / "de.jsonl"), "--out", str(out), "--vocab-size", str(VOCAB)]) == 0
    assert _snapshot(out) != before and "skipped" in capsys.readouterr().out


def test_cli_on_empty_input_leaves_no_spm_directory(tmp_path, capsys):
    empty = _write(tmp_path / "empty.txt", [b"", b"  "])
    assert main(["tokenizer", "--input", str(empty), "--out", str(tmp_path / "tok")]) == 2
    assert "empty.txt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


@pytest.mark.parametrize("damage", [b"\xff\xfe garbage", b'{"version": "1.0", "model": ', b"{}", b""])
def test_damaged_tokenizer_json_names_the_file(tokenizer_dir, tmp_path, damage):
    copy = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, copy)
    (copy / "tokenizer.json").write_bytes(damage)
    with pytest.raises(DataError, match=rf"{copy / 'tokenizer.json'}: "):
        load_tokenizer(copy)


def test_missing_tokenizer_is_a_data_error_and_file_not_found(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json") as info:
        load_tokenizer(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError)  # callers catching FileNotFoundError keep working
