"""gnome-user-docs: Mallard `.page` XML, `usr/share/help/<lang-dir>/<guide>/*.page` (gnome-help and
system-admin-guide). Pages are aligned across languages by guide and file name, sections by their `id`.

Paragraphs are Mallard `p` elements outside `info` (credits, links) and `media` (image captions); the page's
`info/desc` (its one-line summary) opens the lead text. Untranslated strings stay English in a translated
page; the language-ID step removes them.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from data_prep.files import DataError
from data_prep.sources import Document, Section
from data_prep.sources.languages import GNOME
from data_prep.sources.text import clean_inline

SOURCE = "gnome-user-docs"
PACKAGE = "gnome-user-docs"
NS = "http://projectmallard.org/1.0/"
M = {"m": NS}
GUIDES = ("gnome-help", "system-admin-guide")


def language_dir(root: Path, lang: str) -> Path:
    return root / "usr" / "share" / "help" / GNOME[lang]


def _text(element) -> str:
    return clean_inline("".join(element.itertext()))


def _container(p):
    for ancestor in p.iterancestors():
        if ancestor.tag in (f"{{{NS}}}section", f"{{{NS}}}page"):
            return ancestor
    return None


def _skipped(p) -> bool:
    return any(a.tag in (f"{{{NS}}}info", f"{{{NS}}}media") for a in p.iterancestors())


def parse_page(path: str | Path, lang: str, doc_id: str | None = None) -> Document:
    """One `.page` as a Document; malformed XML or a root that is not a Mallard page raises DataError."""
    path = Path(path)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.parse(str(path), parser).getroot()
    except (OSError, etree.XMLSyntaxError) as err:
        raise DataError(f"{path}: not well-formed Mallard XML ({err})") from err
    if root.tag != f"{{{NS}}}page":
        raise DataError(f"{path}: root element is {root.tag!r}, expected a Mallard <page>")
    title_el = root.find("m:title", M)
    title = _text(title_el) if title_el is not None else ""
    lead = Section("", title, [], 1)
    desc = root.find("m:info/m:desc", M)
    if desc is not None and _text(desc):
        lead.paragraphs.append(_text(desc))
    # keyed by path in the tree, not id(): lxml element proxies are made on demand and their ids get reused
    tree = root.getroottree()
    sections: dict[str, Section] = {tree.getpath(root): lead}
    for p in root.iter(f"{{{NS}}}p"):
        if _skipped(p):
            continue
        text = _text(p)
        container = _container(p)
        if not text or container is None:
            continue
        where = tree.getpath(container)
        if where not in sections:
            heading = container.find("m:title", M)
            depth = sum(1 for a in container.iterancestors(f"{{{NS}}}section")) + 2
            sections[where] = Section(container.get("id") or f"s{len(sections)}",
                                      _text(heading) if heading is not None else "", [], depth)
        sections[where].paragraphs.append(text)
    ordered = [s for s in sections.values() if s.paragraphs]
    return Document(SOURCE, doc_id or path.stem, lang, title, ordered)


def documents(root: Path, lang: str, limit: int | None = None) -> list[Document]:
    directory = language_dir(root, lang)
    if not directory.is_dir():
        raise DataError(f"{PACKAGE}: no {directory} for language {lang!r}")
    paths = [p for guide in GUIDES for p in sorted((directory / guide).glob("*.page"))]
    docs = [parse_page(p, lang, f"{p.parent.name}/{p.stem}") for p in paths[:limit]]
    return [d for d in docs if d.sections]
