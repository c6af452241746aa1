"""libreoffice-help-<lang>: LibreOffice help pages as XHTML, `usr/share/libreoffice/help/<lang-dir>/text/**.html`.

Pages are aligned across languages by path, headings by their `hd_id…` ids. The text is the page's
`div#DisplayArea`; the first `h1` is the title; each `p` belongs to the last heading before it (headings are
flat siblings here). Code samples, image captions and "related topics" link lists are left out.
"""

from __future__ import annotations

from pathlib import Path

import lxml.html

from data_prep.files import DataError
from data_prep.sources import Document, Section
from data_prep.sources.languages import LIBREOFFICE
from data_prep.sources.text import clean_inline

SOURCE = "libreoffice-help"
SKIP_CLASSES = {"code", "image", "related", "howtogetheader", "tableheadintable", None}
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


def package(lang: str) -> str:
    return f"libreoffice-help-{LIBREOFFICE[lang][0]}"


def language_dir(root: Path, lang: str) -> Path:
    return root / "usr" / "share" / "libreoffice" / "help" / LIBREOFFICE[lang][1]


def parse_page(path: str | Path, lang: str, doc_id: str | None = None) -> Document:
    path = Path(path)
    try:
        page = lxml.html.parse(str(path)).getroot()
    except (OSError, ValueError, lxml.etree.ParserError) as err:
        raise DataError(f"{path}: not a readable XHTML file ({err})") from err
    area = page.xpath("//div[@id='DisplayArea']") if page is not None else []
    if not area:
        raise DataError(f"{path}: no div#DisplayArea (not a LibreOffice help page)")
    title, current, sections = "", Section("", "", [], 1), []
    sections.append(current)
    for element in area[0].iter("h1", "h2", "h3", "h4", "h5", "h6", "p"):
        text = clean_inline(element.text_content())
        if element.tag in HEADINGS:
            if element.tag == "h1" and not title:
                title = text
                current.heading = text
                continue
            current = Section(element.get("id") or f"s{len(sections)}", text, [], int(element.tag[1]))
            sections.append(current)
        elif text and element.get("class") not in SKIP_CLASSES:
            current.paragraphs.append(text)
    return Document(SOURCE, doc_id or path.name, lang, title, [s for s in sections if s.paragraphs])


def documents(root: Path, lang: str, limit: int | None = None) -> list[Document]:
    directory = language_dir(root, lang)
    if not directory.is_dir():
        raise DataError(f"{package(lang)}: no {directory} for language {lang!r}")
    paths = sorted((directory / "text").glob("**/*.html"))
    docs = [parse_page(p, lang, str(p.relative_to(directory))) for p in paths[:limit]]
    return [d for d in docs if d.sections]
