"""File helpers shared by the data steps: clear errors that name file and line, atomic writes, checksums."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message names the file (and line / field where there is one)."""


class MissingFileError(DataError, FileNotFoundError):
    """A required input file or directory is absent (callers may catch either DataError or FileNotFoundError)."""


def exit_status(command: Callable[[], int | None], expected: tuple[type[BaseException], ...] = (DataError,)) -> int:
    """Run a command-line action and return its exit status: its own (0 when it returns None), or 2 after one
    `error: ...` line on stderr when it raises an `expected` error (bad input), so a user never sees a traceback
    for a mistake the message already explains."""
    try:
        status = command()
    except expected as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if status is None else status


def require_file(path: str | Path, what: str = "input file") -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: {what} not found")
    if not path.is_file():
        raise DataError(f"{path}: {what} is not a regular file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: {what} is not readable")
    return path


@dataclass
class LineScan:
    """What a line-by-line pass over a text/jsonl file found; `bad_lines` are 1-based."""

    path: Path
    lines: int = 0
    skipped: Counter = field(default_factory=Counter)
    bad_lines: list[int] = field(default_factory=list)
    record_lines: list[int] = field(default_factory=list)  # line number of each non-blank line, in order


def scan_lines(path: str | Path, jsonl: bool, on_error: str = "raise") -> LineScan:
    """Check UTF-8 (and JSON objects for jsonl) line by line, before a bulk reader sees the file.

    Bulk readers (pyarrow's JSON reader under `datasets`) fail on the first bad byte with a message that
    names neither file nor line; this pass gives the user both, or counts the line as skipped.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error: expected 'raise' or 'skip', got {on_error!r}")
    path = require_file(path)
    scan = LineScan(path=path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            scan.lines = number
            reason = _line_problem(raw, jsonl)
            if reason is None:
                if raw.strip():
                    scan.record_lines.append(number)
                continue
            if on_error == "raise":
                raise DataError(f"{path}:{number}: {reason}")
            scan.skipped[reason.split(" (")[0]] += 1
            scan.bad_lines.append(number)
    return scan


def _line_problem(raw: bytes, jsonl: bool) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"invalid_utf8 (bad byte at column {err.start + 1})"
    if not jsonl or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return f"invalid_json ({err.msg} at column {err.colno})"
    if not isinstance(value, dict):
        return f"invalid_json (expected an object, got {type(value).__name__})"
    return None


def copy_without_lines(source: Path, target: Path, bad_lines: list[int]) -> Path:
    """Copy a file leaving out the given 1-based lines (bad ones a previous scan counted as skipped)."""
    bad = set(bad_lines)
    with source.open("rb") as src, target.open("wb") as dst:
        for number, raw in enumerate(src, start=1):
            if number not in bad:
                dst.write(raw)
    return target


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes.

    A crash mid-write leaves a `.tmp` file, never a file with the final name that looks complete.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, value: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; raises DataError naming file and line."""
    path = require_file(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            problem = _line_problem(raw, jsonl=True)
            if problem is not None:
                raise DataError(f"{path}:{number}: {problem}")
            if raw.strip():
                yield number, json.loads(raw)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
