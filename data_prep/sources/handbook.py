"""debian-handbook: Publican (DocBook) XHTML, `usr/share/doc/debian-handbook/html/<lang-dir>/*.html`.

One file is one chapter (with its first section) or one top-level section with its subsections; files are
aligned across languages by name, sections by their anchor ids. Paragraphs are the `div.para` elements;
screens (`pre`), the index page and the table of contents carry none and are skipped.
"""

from __future__ import annotations

from pathlib import Path

import lxml.html

from data_prep.files import DataError
from data_prep.sources import Document, Section
from data_prep.sources.languages import HANDBOOK
from data_prep.sources.text import clean_inline, strip_numbering

SOURCE = "debian-handbook"
PACKAGE = "debian-handbook"
CONTAINERS = {"book", "part", "chapter", "appendix", "preface", "section", "article", "glossary"}
SKIP_FILES = {"index.html"}  # table of contents and legal notice


def language_dir(root: Path, lang: str) -> Path:
    return root / "usr" / "share" / "doc" / PACKAGE / "html" / HANDBOOK[lang]


def _container(element) -> lxml.html.HtmlElement | None:
    for ancestor in element.iterancestors("div"):
        if CONTAINERS.intersection((ancestor.get("class") or "").split()):
            return ancestor
    return None


def _heading(container) -> tuple[str, str, int]:
    """(anchor id, heading text, level) of a container's own title."""
    for title in container.xpath("./div[contains(@class, 'titlepage')]//*[self::h1 or self::h2 or self::h3 "
                                 "or self::h4 or self::h5 or self::h6]"):
        anchors = title.xpath(".//a[@id]")
        key = anchors[0].get("id") if anchors else (container.get("id") or "")
        return key, strip_numbering(clean_inline(title.text_content())), int(title.tag[1])
    return container.get("id") or "", "", 9


def _paragraph_text(para) -> str:
    if para.xpath(".//pre|.//table"):
        para = lxml.html.fromstring(lxml.html.tostring(para))
        for block in para.xpath(".//pre|.//table"):
            block.drop_tree()
    return clean_inline(para.text_content())


def parse_file(path: str | Path, lang: str, doc_id: str | None = None) -> Document:
    """One handbook file as a Document; a file that is not XHTML raises DataError naming it."""
    path = Path(path)
    try:
        tree = lxml.html.parse(str(path))
    except (OSError, ValueError, lxml.etree.ParserError) as err:
        raise DataError(f"{path}: not a readable XHTML file ({err})") from err
    root = tree.getroot()
    if root is None:
        raise DataError(f"{path}: empty document")
    # keyed by the container's path in the tree: lxml makes element proxies on demand, so id() of one is not
    # the element's identity (a freed proxy's id is reused by another element's: sections merged at random)
    sections: dict[str, Section] = {}
    for para in root.xpath("//div[contains(concat(' ', normalize-space(@class), ' '), ' para ')]"):
        container = _container(para)
        if container is None:
            continue
        text = _paragraph_text(para)
        if not text:
            continue
        where = tree.getpath(container)
        if where not in sections:
            key, heading, level = _heading(container)
            sections[where] = Section(key or f"s{len(sections)}", heading, [], level)
        sections[where].paragraphs.append(text)
    ordered = list(sections.values())
    top = next((d for d in root.iter("div") if CONTAINERS.intersection((d.get("class") or "").split())), None)
    title = _heading(top)[1] if top is not None else ""
    titles = root.xpath("//head/title")
    if not title and titles:
        title = strip_numbering(clean_inline(titles[0].text_content()))
    return Document(SOURCE, doc_id or path.stem, lang, title, ordered)


def documents(root: Path, lang: str, limit: int | None = None) -> list[Document]:
    """Every chapter/section file of one language (sorted by name, at most `limit`), those with text."""
    directory = language_dir(root, lang)
    if not directory.is_dir():
        raise DataError(f"{PACKAGE}: no {directory} for language {lang!r}")
    files = [p for p in sorted(directory.glob("*.html")) if p.name not in SKIP_FILES]
    docs = [parse_file(p, lang) for p in files[:limit]]
    return [d for d in docs if d.sections]
