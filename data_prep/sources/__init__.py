"""Documentation corpora from Debian's package registry, parsed into one document model.

A `Document` is one page or chapter of one source in one language; its `doc_id` aligns it with the same
page in the other languages, and each `Section.key` aligns a section inside it (anchor ids, Mallard section
ids, LibreOffice heading ids). Parsers live in one module per format:

    handbook  debian-handbook      Publican/DocBook XHTML, one file per chapter or top-level section
    mallard   gnome-user-docs      Mallard `.page` XML, one file per help page
    lohelp    libreoffice-help-*   LibreOffice help XHTML, one file per help page
    manpages  manpages(-<lang>)    roff manual pages, rendered to text by groff
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Section:
    """A heading with the paragraphs directly under it ("" heading: the page's lead text)."""

    key: str  # aligns the section across languages inside one document
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    level: int = 1

    def text(self) -> str:
        return "\n".join(self.paragraphs)


@dataclass
class Document:
    source: str  # source name, e.g. "debian-handbook"
    doc_id: str  # aligns the document across languages (file name, page id, path)
    lang: str  # the project's language code (data_prep.sources.languages)
    title: str
    sections: list[Section] = field(default_factory=list)

    def paragraphs(self) -> list[str]:
        return [p for s in self.sections for p in s.paragraphs]

    def body(self) -> str:
        """The page's paragraphs, one per line, without headings."""
        return "\n".join(self.paragraphs())

    def text_with_headings(self) -> str:
        """Title, headings and paragraphs, one per line: the page as prose for MLM."""
        lines = [self.title] if self.title else []
        for section in self.sections:
            if section.heading and section.heading != self.title:
                lines.append(section.heading)
            lines.extend(section.paragraphs)
        return "\n".join(lines)

    def chars(self) -> int:
        return sum(len(p) for p in self.paragraphs())
