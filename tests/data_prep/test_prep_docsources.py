"""Parsers of the documentation formats and the cached .deb fetch, on files made here (no download)."""

from __future__ import annotations

import json
import shutil

import pytest
from doc_fixtures import DE, EN, build_deb, fake_downloader, handbook_page, lohelp_page, mallard_page, man_page

from data_prep.files import DataError
from data_prep.sources import handbook, lohelp, mallard, manpages
from data_prep.sources.debian import get_package
from data_prep.sources.languages import check_languages
from data_prep.sources.text import strip_numbering


def test_handbook_sections_headings_and_screens(tmp_path):
    path = tmp_path / "chapter.html"
    path.write_text(handbook_page("en", [0, 1]), encoding="utf-8")
    doc = handbook.parse_file(path, "en")
    assert doc.title == "Chapter"  # "Chapter 1. Chapter" without its label
    assert [s.key for s in doc.sections] == ["chapter.s0", "chapter.s1"]
    assert [s.heading for s in doc.sections] == ["Installing software", "Keeping the system current"]
    assert doc.sections[0].paragraphs == [EN[0]]  # whitespace collapsed, the <pre> screen left out
    assert "apt update" not in doc.text_with_headings()


def test_heading_numbering_is_stripped_in_several_scripts():
    assert strip_numbering("6.2.\u00a0Installing and Removing".replace("\u00a0", " ")) == "Installing and Removing"
    assert strip_numbering("第 6 章 メンテナンスと更新") == "メンテナンスと更新"
    assert strip_numbering("Chapter 6. Maintenance") == "Maintenance"
    assert strip_numbering("6장. 유지 보수") == "유지 보수"
    assert strip_numbering("A.1. Census") == "Census"
    assert strip_numbering("Using IPv6 tunnels") == "Using IPv6 tunnels"  # a number inside a word is no label
    assert strip_numbering("Backup in practice") == "Backup in practice"


def test_mallard_page_sections_desc_and_skipped_media(tmp_path):
    path = tmp_path / "printing.page"
    path.write_text(mallard_page("de", 3, "printing"), encoding="utf-8")
    doc = mallard.parse_page(path, "de", "gnome-help/printing")
    assert doc.title == "Drucker freigeben" and doc.doc_id == "gnome-help/printing"
    assert doc.sections[0].paragraphs == ["Drucker freigeben", DE[3]]  # desc opens the lead text
    assert doc.sections[1].key == "more" and doc.sections[1].paragraphs == [DE[4]]
    assert "caption" not in doc.body() and "Writer" not in doc.body()


def test_libreoffice_page_flat_headings_skip_code(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(lohelp_page("en", 0), encoding="utf-8")
    doc = lohelp.parse_page(path, "en", "text/page.html")
    assert doc.title == "Installing software"
    assert [(s.key, s.heading) for s in doc.sections] == [("", "Installing software"), ("hd_2", "Saving your data")]
    assert doc.sections[1].paragraphs == [EN[2]]  # the code sample and the related-topics list are left out
    assert "Sub Main" not in doc.body() and "office suite" not in doc.body()


def test_man_page_rendered_by_groff(tmp_path):
    if shutil.which("groff") is None:
        pytest.fail("groff is part of the machine image (man-db); the manpages source needs it")
    path = tmp_path / "tool.1.gz"
    path.write_bytes(man_page("de", 0, "tool"))
    doc = manpages.parse_page(path, "de", "man1/tool.1")
    assert doc.title == "tool - Software installieren"
    assert [s.heading for s in doc.sections][:2] == ["BESCHREIBUNG", "Drucker freigeben"]  # .SH then .SS
    assert doc.sections[0].paragraphs == [DE[0]]
    assert doc.sections[1].paragraphs == [DE[3]]


def test_man_page_include_only_is_skipped(tmp_path):
    path = tmp_path / "alias.1"
    path.write_text(".so man1/tool.1\n", encoding="utf-8")
    assert manpages.parse_page(path, "en") is None


@pytest.mark.parametrize("content", ["", "<html><body><p>no display area</p></body></html>"])
def test_empty_or_foreign_libreoffice_page_names_the_file(tmp_path, content):
    path = tmp_path / "empty.html"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="empty.html"):
        lohelp.parse_page(path, "en")


def test_broken_mallard_xml_names_the_file(tmp_path):
    path = tmp_path / "broken.page"
    path.write_text('<page xmlns="http://projectmallard.org/1.0/"><title>x</p>', encoding="utf-8")
    with pytest.raises(DataError, match="broken.page"):
        mallard.parse_page(path, "en")
    path.write_text("<html/>", encoding="utf-8")
    with pytest.raises(DataError, match="expected a Mallard"):
        mallard.parse_page(path, "en")


def test_empty_mallard_page_has_no_sections(tmp_path):
    path = tmp_path / "empty.page"
    path.write_text('<page xmlns="http://projectmallard.org/1.0/" id="e"><title>Empty</title></page>',
                    encoding="utf-8")
    assert mallard.parse_page(path, "en").sections == []


def test_unknown_language_code_is_named():
    with pytest.raises(DataError, match=r"unknown language code\(s\) \['xx'\]"):
        check_languages(["en", "xx"])


# ---- .deb fetch, cache and unpack ----------------------------------------------------------------------
def test_package_is_cached_verified_and_reused(tmp_path):
    deb = build_deb("doc-test", {"usr/share/help/C/gnome-help/a.page": mallard_page("en", 0, "a")}, tmp_path,
                    version="2:3.1-4", licence="MPL-2.0")
    calls: list[str] = []
    cache = tmp_path / "cache"
    first = get_package("doc-test", cache, fake_downloader({"doc-test": deb}, calls))
    assert (first.version, first.licence) == ("2:3.1-4", "MPL-2.0")
    assert (first.root / "usr/share/help/C/gnome-help/a.page").is_file()
    record = json.loads((cache / "debs" / "doc-test.json").read_text())
    assert record["sha256"] == first.sha256 and len(first.sha256) == 64
    second = get_package("doc-test", cache, fake_downloader({}, calls))  # would fail if it downloaded
    assert second == first and calls == ["doc-test"]
    # a cached file that no longer matches its sha256 is fetched again
    first.deb.write_bytes(b"tampered")
    get_package("doc-test", cache, fake_downloader({"doc-test": deb}, calls))
    assert calls == ["doc-test", "doc-test"]


def test_missing_package_and_corrupt_deb_name_the_package(tmp_path):
    with pytest.raises(DataError, match="no-such-doc: apt-get download failed"):
        get_package("no-such-doc", tmp_path / "cache", fake_downloader({}))
    corrupt = tmp_path / "corrupt_1.0_all.deb"
    corrupt.write_bytes(b"!<arch>\nthis is not a debian package")
    with pytest.raises(DataError, match="corrupt-doc: .* not a valid Debian package"):
        get_package("corrupt-doc", tmp_path / "cache", fake_downloader({"corrupt-doc": corrupt}))
    assert not (tmp_path / "cache" / "debs" / "corrupt-doc.json").exists()  # nothing half-recorded


def test_package_with_another_name_is_refused(tmp_path):
    deb = build_deb("other-doc", {"usr/share/doc/x/readme": "x"}, tmp_path)
    with pytest.raises(DataError, match="holds package 'other-doc'"):
        get_package("wanted-doc", tmp_path / "cache", fake_downloader({"wanted-doc": deb}))


def test_free_form_copyright_file_is_pointed_to(tmp_path):
    from data_prep.sources.debian import copyright_licences

    doc = tmp_path / "usr/share/doc/old-doc"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("This package was debianized in 1998.\nCopyright: JM Project\n", encoding="utf-8")
    assert copyright_licences(tmp_path, "old-doc") == (
        "see usr/share/doc/old-doc/copyright (free-form, no License field)", ())


def _paragraph(n: int, k: int) -> str:
    return f"Paragraph {k} of section number {n} explains one administration task in plain words."


def test_many_nested_handbook_sections_keep_their_own_paragraphs(tmp_path):
    # sections were keyed by id() of lxml element proxies, which lxml makes on demand: a freed proxy's id was
    # reused by the next container's, so sections merged at random (71-73 of 96 on a real handbook page)
    body = "".join(
        f'<div class="section"><div class="titlepage"><div><div><h{2 + n % 3} class="title"><a id="s{n}"></a>'
        f'Heading number {n}</h{2 + n % 3}></div></div></div>'
        + "".join(f'<div class="para">{_paragraph(n, k)}</div>' for k in range(2))
        + (f'<div class="section"><div class="titlepage"><div><div><h4 class="title"><a id="s{n}.inner"></a>'
           f'Inner heading {n}</h4></div></div></div><div class="para">{_paragraph(1000 + n, 0)}</div></div>')
        + "</div>" for n in range(40))
    page = tmp_path / "chapter.html"
    page.write_text('<html><head><title>T</title></head><body><div class="chapter"><div class="titlepage"><div><div>'
                    f'<h1 class="title"><a id="top"></a>Top</h1></div></div></div>{body}</div></body></html>',
                    encoding="utf-8")
    for _ in range(3):  # the same result every time
        doc = handbook.parse_file(page, "en")
        assert len(doc.sections) == 80
        for section in doc.sections:
            n = section.key.split(".")[0][1:]
            number = 1000 + int(n) if section.key.endswith(".inner") else int(n)
            assert section.paragraphs and all(f"section number {number} " in p for p in section.paragraphs), \
                section.key


def test_many_mallard_sections_keep_their_own_paragraphs(tmp_path):
    sections = "".join(f'<section id="s{n}"><title>Heading number {n}</title><p>{_paragraph(n, 0)}</p>'
                       f'<p>{_paragraph(n, 1)}</p></section>' for n in range(60))
    page = tmp_path / "page.page"
    page.write_text('<?xml version="1.0" encoding="utf-8"?>\n<page xmlns="http://projectmallard.org/1.0/" '
                    f'type="topic" id="p"><title>Title</title>{sections}</page>', encoding="utf-8")
    doc = mallard.parse_page(page, "en", "p")
    assert [s.key for s in doc.sections] == [f"s{n}" for n in range(60)]
    for n, section in enumerate(doc.sections):
        assert section.paragraphs == [_paragraph(n, 0), _paragraph(n, 1)]
