"""Issue 17, points 7 and 12: a failed `shards` run keeps the previous shards; token ids are range-checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.__main__ import main
from data_prep.corpus import CorpusSource, ShardConfig, build_shards
from data_prep.files import DataError
from data_prep.shards import ShardReader

CONFIG = ShardConfig(max_length=32, shard_tokens=400)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_build(tmp_path_factory, tokenizer_dir) -> Path:
    """A shard directory from a successful run (several shards per language)."""
    root = tmp_path_factory.mktemp("good")
    de = _jsonl(root / "de.jsonl", [{"text": f"Satz Nummer {i} steht hier. " * (1 + i % 5)} for i in range(40)])
    ru = _jsonl(root / "ru.jsonl", [{"text": f"Строка номер {i} здесь. " * (1 + i % 4)} for i in range(30)])
    build_shards([CorpusSource("de", str(de)), CorpusSource("ru", str(ru))], tokenizer_dir, root / "out", CONFIG,
                 progress=False)
    assert len(list((root / "out" / "shards").glob("*.ids.npy"))) >= 4
    return root


@pytest.fixture
def built(good_build, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(good_build / "out", out)
    return out


# ---- point 7: bad input never touches the shards of an earlier successful run -----------------------------
def _bad_cli_cases(tmp: Path, tokenizer_dir: Path, good: Path) -> dict[str, list[str]]:
    empty = tmp / "empty.jsonl"
    empty.write_bytes(b"")
    blank = _jsonl(tmp / "blank.jsonl", [{"text": "  "}, {"text": "\x00\x01"}])
    bad_line = tmp / "bad.jsonl"
    bad_line.write_text('{"text": "gut"}\n{"text": kaputt\n', encoding="utf-8")
    wrong_field = _jsonl(tmp / "field.jsonl", [{"body": "Hallo"}])
    damaged_tok = tmp / "damaged-tok"
    shutil.copytree(tokenizer_dir, damaged_tok)
    (damaged_tok / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    de = str(good / "de.jsonl")
    return {
        "source typo": ["--source", f"de={tmp / 'de.jsonll'}"],
        "max-length 0": ["--source", f"de={de}", "--max-length", "0"],
        "max-length 2": ["--source", f"de={de}", "--max-length", "2"],
        "shard-tokens 0": ["--source", f"de={de}", "--shard-tokens", "0"],
        "empty jsonl": ["--source", f"de={empty}"],
        "blank texts only": ["--source", f"de={blank}"],
        "bad line, raise": ["--source", f"de={bad_line}", "--on-bad-line", "raise"],
        "wrong text field": ["--source", f"de={wrong_field}"],
        "no source": [],
        "bad LANG=PATH": ["--source", de],
        "tokenizer typo": ["--source", f"de={de}", "--tokenizer", str(tmp / "no-such-tok")],
        "damaged tokenizer": ["--source", f"de={de}", "--tokenizer", str(damaged_tok)],
    }


def test_failed_runs_keep_earlier_shards_byte_for_byte(built, good_build, tokenizer_dir, tmp_path, capsys):
    before = _snapshot(built)
    for name, args in _bad_cli_cases(tmp_path, tokenizer_dir, good_build).items():
        argv = ["shards", "--tokenizer", str(tokenizer_dir), "--out", str(built), "--quiet", *args]
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse and LANG=PATH errors exit directly
            code = stop.code
        assert code not in (0, None), name
        assert _snapshot(built) == before, f"{name}: the earlier shards changed"
        assert sorted(p.name for p in built.iterdir()) == ["manifest.json", "shards"], name  # no temp dirs left
    ShardReader(built, verify=True)
    err = capsys.readouterr().err
    assert "de.jsonll" in err and "empty.jsonl" in err and "bad.jsonl:2" in err and "tokenizer.json" in err


def test_api_validates_config_before_touching_outputs(built, good_build, tokenizer_dir):
    before = _snapshot(built)
    source = [CorpusSource("de", str(good_build / "de.jsonl"))]
    for bad in ({"max_length": 0}, {"min_tokens": 0}, {"batch_size": 0}, {"on_bad_line": "ignore"},
                {"normalization": "NFX"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_shards(source, tokenizer_dir, built, ShardConfig(**bad), progress=False)
        assert _snapshot(built) == before, bad


def test_failure_in_a_new_directory_leaves_nothing(good_build, tokenizer_dir, tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataError):
        build_shards([CorpusSource("de", str(empty))], tokenizer_dir, tmp_path / "new" / "out", progress=False)
    assert not (tmp_path / "new" / "out").exists()


def test_successful_rebuild_replaces_every_shard(built, good_build, tokenizer_dir):
    old = _snapshot(built)
    fr = _jsonl(good_build.parent / "fr-rebuild.jsonl", [{"text": f"Phrase numéro {i}."} for i in range(5)])
    manifest = build_shards([CorpusSource("fr", str(fr))], tokenizer_dir, built, CONFIG, progress=False)
    names = sorted(p.name for p in (built / "shards").iterdir())
    assert names == ["fr-00000.ids.npy", "fr-00000.offsets.npy"]  # no de-/ru- shards of the old run left
    assert sorted(p.name for p in built.iterdir()) == ["manifest.json", "shards"]
    assert manifest["languages"].keys() == {"fr"} and _snapshot(built) != old
    assert len(ShardReader(built, verify=True)) == 5


# ---- point 12: token ids are range-checked without verify ---------------------------------------------------
def test_manifest_records_the_max_id_of_each_shard(built):
    manifest = json.loads((built / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["shards"]:
        ids = np.load(built / "shards" / entry["ids"])
        assert entry["max_id"] == int(ids.max())
        assert entry["max_id"] < manifest["tokenizer"]["vocab_size"]


def _rot(built: Path, value: int) -> tuple[Path, int]:
    """Overwrite one token id in place (same size, stale checksum: what bit-rot looks like)."""
    path = sorted((built / "shards").glob("ru-*.ids.npy"))[-1]
    ids = np.load(path, mmap_mode="r+")
    position = len(ids) // 2
    ids[position] = value
    ids.flush()
    del ids
    return path, position


def test_bit_rot_id_is_caught_without_verify(built):
    vocab = json.loads((built / "manifest.json").read_text(encoding="utf-8"))["tokenizer"]["vocab_size"]
    path, _ = _rot(built, vocab + 7)
    reader = ShardReader(built)  # verify off, as in training by default
    with pytest.raises(DataError, match=rf"{path.name}.*token id {vocab + 7}.*vocabulary of {vocab}"):
        for i in range(len(reader)):
            reader[i]
    with pytest.raises(DataError, match="checksum"):
        ShardReader(built, verify=True)


def test_max_id_beyond_the_vocabulary_is_refused_at_open(built):
    manifest_path = built / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    top = max(entry["max_id"] for entry in manifest["shards"])
    manifest["tokenizer"]["vocab_size"] = top  # ids must be < vocab_size
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    message = rf"manifest.json: shard .* max token id {top}, outside .*vocabulary of {top} ids"
    with pytest.raises(DataError, match=message):
        ShardReader(built)


def test_manifest_without_max_id_still_reads_and_checks_ids(built):
    manifest_path = built / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for entry in manifest["shards"]:
        del entry["max_id"]  # written before the field existed
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    reader = ShardReader(built)
    assert all(reader[i][0] == 0 for i in range(len(reader)))
    vocab = manifest["tokenizer"]["vocab_size"]
    path, _ = _rot(built, 2**32 - 1)
    reader = ShardReader(built)
    with pytest.raises(DataError, match=rf"{path.name}.*token id {2**32 - 1}.*vocabulary of {vocab}"):
        for i in range(len(reader)):
            reader[i]


def test_damaged_offsets_are_refused_at_open(built):
    path = sorted((built / "shards").glob("de-*.offsets.npy"))[0]
    offsets = np.load(path, mmap_mode="r+")
    offsets[2] = offsets[1]  # an empty sequence: offsets must strictly increase
    offsets.flush()
    del offsets
    with pytest.raises(DataError, match=rf"{path.name}: offsets do not increase"):
        ShardReader(built)
