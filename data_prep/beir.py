"""Retrieval eval sets in the BEIR layout, read and written with validation that names file and line.

    corpus.jsonl     {"_id", "title", "text"}
    queries.jsonl    {"_id", "text", "lang"?}
    qrels/<split>.tsv  header `query-id<TAB>corpus-id<TAB>score`, one judgement per line
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.files import DataError, atomic_path, read_jsonl, require_file, write_jsonl

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass
class BeirData:
    corpus: dict[str, dict[str, str]]  # doc id -> {"title", "text"}
    queries: dict[str, dict[str, str]]  # query id -> {"text", "lang"?}
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # split -> qid -> doc id -> score

    def summary(self) -> dict:
        return {"corpus": len(self.corpus), "queries": len(self.queries),
                "qrels": {split: {"queries": len(q), "judgements": sum(len(d) for d in q.values())}
                          for split, q in self.qrels.items()}}


def write_beir(data: BeirData, directory: str | Path) -> Path:
    directory = Path(directory)
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "corpus.jsonl", [{"_id": i, **d} for i, d in data.corpus.items()])
    write_jsonl(directory / "queries.jsonl", [{"_id": i, **q} for i, q in data.queries.items()])
    for split, qrels in data.qrels.items():
        with atomic_path(directory / "qrels" / f"{split}.tsv") as tmp, tmp.open("w", encoding="utf-8") as out:
            out.write("\t".join(QRELS_HEADER) + "\n")
            for qid, docs in qrels.items():
                for doc_id, score in docs.items():
                    out.write(f"{qid}\t{doc_id}\t{score}\n")
    return directory


def read_beir(directory: str | Path, splits: tuple[str, ...] = ("test", "dev"),
              required: tuple[str, ...] = ("test",)) -> BeirData:
    """Read and validate; splits in `required` must exist, the others are read when present."""
    directory = Path(directory)
    corpus = _read_items(directory / "corpus.jsonl", text_fields=("text",), optional=("title",))
    queries = _read_items(directory / "queries.jsonl", text_fields=("text",), optional=("lang",))
    data = BeirData(corpus=corpus, queries=queries)
    for split in splits:
        path = directory / "qrels" / f"{split}.tsv"
        if split not in required and not path.exists():
            continue
        data.qrels[split] = _read_qrels(path, corpus, queries)
    return data


def _read_items(path: Path, text_fields: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, dict[str, str]]:
    items: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        item_id = row.get("_id")
        if not isinstance(item_id, str) or not item_id:
            raise DataError(f"{where}: field '_id' must be a non-empty string, got {item_id!r}")
        if item_id in items:
            raise DataError(f"{where}: duplicate _id {item_id!r} (first on line {lines[item_id]})")
        item = {}
        for name in text_fields:
            if not isinstance(row.get(name), str):
                raise DataError(f"{where}: field {name!r} must be a string, got {row.get(name)!r}")
            item[name] = row[name]
        for name in optional:
            value = row.get(name, "")
            if not isinstance(value, str):
                raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
            if value or name == "title":
                item[name] = value
        items[item_id], lines[item_id] = item, line
    if not items:
        raise DataError(f"{path}: no records (empty file)")
    return items


def _read_qrels(path: Path, corpus: dict, queries: dict) -> dict[str, dict[str, int]]:
    require_file(path, "qrels file")
    qrels: dict[str, dict[str, int]] = {}
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            where = f"{path}:{line}"
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: invalid UTF-8 at column {err.start + 1}") from err
            fields = text.split("\t")
            if line == 1:
                if tuple(fields) != QRELS_HEADER:
                    raise DataError(f"{where}: header must be {'<TAB>'.join(QRELS_HEADER)!r}, got {text!r}")
                continue
            if not text.strip():
                continue
            if len(fields) != 3:
                raise DataError(f"{where}: expected 3 tab-separated fields, got {len(fields)}")
            qid, doc_id, score = fields
            if qid not in queries:
                raise DataError(f"{where}: field 'query-id' {qid!r} is not in queries.jsonl")
            if doc_id not in corpus:
                raise DataError(f"{where}: field 'corpus-id' {doc_id!r} is not in corpus.jsonl")
            try:
                qrels.setdefault(qid, {})[doc_id] = int(score)
            except ValueError as err:
                raise DataError(f"{where}: field 'score' must be an integer, got {score!r}") from err
    if not qrels:
        raise DataError(f"{path}: no judgements")
    return qrels
