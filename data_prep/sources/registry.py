"""The documentation sources the corpus builder knows: package(s) per language, parser, licence."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_prep.sources import Document, handbook, lohelp, mallard, manpages
from data_prep.sources.languages import GNOME, HANDBOOK, LIBREOFFICE, MANPAGES


@dataclass(frozen=True)
class DocSource:
    name: str
    licence: str  # as the package's copyright file states it (DATA.md); the manifest also records the file's
    package: Callable[[str], str | None]  # language -> Debian package holding it, None if not translated
    parse: Callable[[Path, str, int | None], list[Document]]  # (unpacked package, language, page cap)


def _one(package: str, table: dict) -> Callable[[str], str | None]:
    return lambda lang: package if lang in table else None


DOC_SOURCES = {
    "debian-handbook": DocSource("debian-handbook", "GPL-2.0+ or CC-BY-SA-3.0", _one("debian-handbook", HANDBOOK),
                                 handbook.documents),
    "gnome-user-docs": DocSource("gnome-user-docs", "CC-BY-SA-3.0", _one("gnome-user-docs", GNOME),
                                 mallard.documents),
    "libreoffice-help": DocSource("libreoffice-help", "MPL-2.0",
                                  lambda lang: lohelp.package(lang) if lang in LIBREOFFICE else None,
                                  lohelp.documents),
    "manpages": DocSource("manpages", "per page (GPL-2.0+, GPL-3.0+ and others; see each package's copyright)",
                          lambda lang: manpages.package(lang) if lang in MANPAGES else None, manpages.documents),
}
EMBEDDED = "embedded"  # Django catalogs + UDHR (data_prep.embedded)
SOURCE_NAMES = (EMBEDDED, *DOC_SOURCES)
