"""The benchmarks' JSON report, rewritten after every row: a run killed midway leaves valid JSON.

Each write goes to a temporary file that is then renamed over the report, so a reader (or a kill) never sees a
half-written file. `complete` stays false until the run marks it done.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


class LiveReport:
    def __init__(self, path: Path | str, header: dict, sections: tuple[str, ...] = ("rows",)) -> None:
        self.path = Path(path)
        self.data = {**header, "complete": False, **{name: [] for name in sections}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        self.write()

    def finish(self, **fields) -> None:
        self.data.update(fields, complete=True)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


def error_text(err: BaseException) -> str:
    """`Type: last non-empty line` of an exception (Triton puts the reason last, after the source excerpt)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {(lines[-1] if lines else '')[:200]}"


def report_rows(report: LiveReport, inputs: Iterable, measure: Callable[[Any], dict],
                table: Callable[[list[dict]], str]) -> int:
    """`measure` each input, adding its row to the report as it comes; then print `table(rows)` and finish the
    report. A bad input (ValueError, FileNotFoundError) prints its error and gives exit status 2, the rows before
    it kept in the report; otherwise 0."""
    rows = []
    for item in inputs:
        try:
            rows.append(measure(item))
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        report.add("rows", rows[-1])
    print(table(rows))
    report.finish()
    return 0
