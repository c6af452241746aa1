"""manpages / manpages-<lang>: manual pages in roff, `usr/share/man/[<lang-dir>/]man?/*.?.gz`, rendered to
plain text by groff (the `man` macros, tbl for tables, preconv for the input encoding) and read as text.

In groff's output a section heading starts at column 0 (`.SH`), a subsection at column 3 (`.SS`), and
paragraphs are indented blocks separated by blank lines; the line length is set so wide that a paragraph is
one line. The NAME section ("ls - list directory contents") becomes the title. Pages are aligned across
languages by section and name; sections by position (their headings are translated). Pages that only
include another (`.so`) are skipped.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from data_prep.files import DataError
from data_prep.sources import Document, Section
from data_prep.sources.languages import MANPAGES
from data_prep.sources.text import clean_inline

SOURCE = "manpages"
LINE_LENGTH = 4000  # characters: no paragraph wraps
GROFF_ARGS = ["-t", "-k", "-man", "-Tutf8", f"-rLL={LINE_LENGTH}n", "-rHY=0", "-dAD=l", "-P-cbou"]


def package(lang: str) -> str:
    return MANPAGES[lang][0]


def man_dir(root: Path, lang: str) -> Path:
    sub = MANPAGES[lang][1]
    return root / "usr" / "share" / "man" / sub if sub else root / "usr" / "share" / "man"


def read_roff(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: unreadable manual page ({err})") from err


def render(roff: bytes, where: str) -> str:
    """groff's text rendering of a page (UTF-8); a missing groff or a failed run raises naming the page."""
    groff = shutil.which("groff")
    if groff is None:
        raise DataError(f"{where}: `groff` is not installed (needed to render manual pages: groff-base)")
    result = subprocess.run([groff, *GROFF_ARGS], input=roff, capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        raise DataError(f"{where}: groff failed: {result.stderr.decode('utf-8', 'replace').strip()[-300:]}")
    return result.stdout.decode("utf-8", "replace")


def parse_rendered(text: str, lang: str, doc_id: str) -> Document:
    """Sections and paragraphs from groff's text output (see the module docstring)."""
    lines = [line.rstrip() for line in text.splitlines()]
    content = [i for i, line in enumerate(lines) if line.strip()]
    if len(content) < 3:
        return Document(SOURCE, doc_id, lang, "", [])
    lines = lines[content[0] + 1:content[-1]]  # header and footer lines
    sections: list[Section] = []
    block: list[str] = []

    def flush() -> None:
        if block and sections:
            paragraph = clean_inline(" ".join(block))
            if paragraph:
                sections[-1].paragraphs.append(paragraph)
        block.clear()

    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip():
            flush()
        elif indent == 0 or (indent == 3 and sections):
            flush()
            sections.append(Section(f"sec{len(sections)}", clean_inline(line), [], 1 if indent == 0 else 2))
        else:
            block.append(line)
    flush()
    title = ""
    if sections and sections[0].paragraphs:  # NAME
        title = sections[0].paragraphs[0]
        sections = sections[1:]
    return Document(SOURCE, doc_id, lang, title, [s for s in sections if s.paragraphs])


def parse_page(path: str | Path, lang: str, doc_id: str | None = None) -> Document | None:
    """One page file rendered and parsed; None for a page that only includes another (`.so`)."""
    path = Path(path)
    roff = read_roff(path)
    if roff.lstrip().startswith(b".so "):
        return None
    name = doc_id or f"{path.parent.name}/{path.name.removesuffix('.gz')}"
    return parse_rendered(render(roff, str(path)), lang, name)


def documents(root: Path, lang: str, limit: int | None = None, workers: int = 2) -> list[Document]:
    directory = man_dir(root, lang)
    if not directory.is_dir():
        raise DataError(f"{package(lang)}: no {directory} for language {lang!r}")
    paths = [p for p in sorted(directory.glob("man[1-9]/*")) if p.is_file() and not p.is_symlink()]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # groff runs as a subprocess: threads overlap it
        docs = list(pool.map(lambda p: parse_page(p, lang), paths[:limit]))
    return [d for d in docs if d is not None and d.sections]
