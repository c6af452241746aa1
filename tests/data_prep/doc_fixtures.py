"""Small documentation packages made in the tests: one page of each format, in English and German, and fake
Debian packages built with `dpkg-deb --build` (no download)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

# hand-written prose, one topic per paragraph (distinct enough that no two are near duplicates)
EN = [
    "The package manager keeps a list of every program installed on the computer and of the files each one owns.",
    "Before an upgrade, read the release notes: they explain which services change their configuration format.",
    "A backup that was never restored is only a hope, so test the recovery of your archives every few months.",
    "Printers shared over the network announce themselves, and the desktop offers to add them automatically.",
    "Strong passwords are long rather than complicated; a sentence of five unrelated words is hard to guess.",
    "The firewall drops incoming connections by default, and each rule opens exactly one port for one service.",
    "Log files grow without limit unless a rotation job compresses them weekly and deletes the oldest copies.",
    "When the screen stays dark after start-up, switch to a text console and look at the messages of the kernel.",
]
DE = [
    "Die Paketverwaltung führt eine Liste aller Programme, die auf dem Rechner installiert sind, und ihrer Dateien.",
    "Lesen Sie vor einer Aktualisierung die Hinweise zur Veröffentlichung, denn sie nennen geänderte Dienste.",
    "Eine Sicherung, die nie wiederhergestellt wurde, ist nur eine Hoffnung; prüfen Sie die Archive regelmäßig.",
    "Drucker, die im Netzwerk freigegeben sind, melden sich selbst, und die Arbeitsumgebung bietet sie gleich an.",
    "Sichere Passwörter sind eher lang als kompliziert; ein Satz aus fünf beliebigen Wörtern ist schwer zu erraten.",
    "Die Firewall verwirft eingehende Verbindungen, und jede Regel öffnet genau einen Anschluss für einen Dienst.",
    "Protokolldateien wachsen ohne Grenze, wenn sie nicht jede Woche komprimiert und die ältesten gelöscht werden.",
    "Bleibt der Bildschirm nach dem Start dunkel, wechseln Sie zur Textkonsole und lesen die Meldungen des Kerns.",
]
HEADINGS = {"en": ["Installing software", "Keeping the system current", "Saving your data", "Sharing printers",
                   "Choosing passwords", "Filtering traffic", "Managing logs", "Fixing a dark screen"],
            "de": ["Software installieren", "Das System aktuell halten", "Daten sichern", "Drucker freigeben",
                   "Passwörter wählen", "Verkehr filtern", "Protokolle verwalten", "Einen dunklen Bildschirm beheben"]}
TEXT = {"en": EN, "de": DE}


def handbook_page(lang: str, pairs: list[int], page_id: str = "chapter") -> str:
    """A Publican chapter with one section per paragraph index in `pairs` (heading + paragraph)."""
    sections = "".join(
        f'<div class="section"><div class="titlepage"><div><div><h2 class="title"><a id="{page_id}.s{i}"></a>'
        f'1.{n + 1}.\u00a0{HEADINGS[lang][i]}</h2></div></div></div>'
        f'<div class="para">\n\t\t\t{TEXT[lang][i]}\n\t\t</div><pre class="screen">$ apt update</pre></div>'
        for n, i in enumerate(pairs))
    return ('<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 '
            'Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd"><html xmlns="http://www.w3.org/1999/'
            f'xhtml"><head><title>Chapter 1. {page_id}</title></head><body><div xml:lang="{lang}" class="chapter">'
            f'<div class="titlepage"><div><div><h1 class="title"><a id="{page_id}"></a>Chapter\u00a01.\u00a0'
            f'{page_id.title()}</h1></div></div></div>{sections}</div></body></html>')


def mallard_page(lang: str, index: int, page_id: str) -> str:
    i, j = index % len(EN), (index + 1) % len(EN)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<page xmlns="http://projectmallard.org/1.0/" type="topic" '
            f'id="{page_id}" xml:lang="{lang}"><info><desc>{HEADINGS[lang][i]}</desc><credit><name>A. Writer'
            f'</name></credit></info><title>{HEADINGS[lang][i]}</title><p>{TEXT[lang][i]}</p>'
            f'<media type="image" src="x.png"><p>An image caption that is not prose text at all</p></media>'
            f'<section id="more"><title>{HEADINGS[lang][j]}</title><steps><item><p>{TEXT[lang][j]}</p></item>'
            '</steps></section></page>')


def lohelp_page(lang: str, index: int) -> str:
    i, j = index % len(EN), (index + 2) % len(EN)
    return (f'<!DOCTYPE html><html lang="{lang}"><head><title>{HEADINGS[lang][i]}</title></head><body>'
            '<header><p>Help for the office suite</p></header><div id="DisplayArea">'
            f'<h1 id="hd_1">{HEADINGS[lang][i]}</h1><p id="par_1" class="paragraph">{TEXT[lang][i]}</p>'
            f'<h2 id="hd_2">{HEADINGS[lang][j]}</h2><p id="par_2" class="paragraph">{TEXT[lang][j]}</p>'
            '<p class="code">Sub Main\nEnd Sub</p><p class="related">Related topics</p></div></body></html>')


def man_page(lang: str, index: int, name: str) -> bytes:
    i, j = index % len(EN), (index + 3) % len(EN)
    heads = {"en": ("NAME", "DESCRIPTION", "OPTIONS"), "de": ("BEZEICHNUNG", "BESCHREIBUNG", "OPTIONEN")}[lang]
    roff = (f'.TH {name.upper()} 1 "2024" "tools" "User Commands"\n.SH {heads[0]}\n{name} \\- {HEADINGS[lang][i]}\n'
            f'.SH {heads[1]}\n{TEXT[lang][i]}\n.SS {HEADINGS[lang][j]}\n{TEXT[lang][j]}\n'
            f'.SH {heads[2]}\n.TP\n.B \\-v\nverbose output\n')
    return gzip.compress(roff.encode("utf-8"))


def build_deb(name: str, files: dict[str, str | bytes], out_dir: Path, version: str = "1.0-1",
              licence: str = "CC-BY-SA-3.0") -> Path:
    """A real .deb of `files` (path inside the package -> content), with a DEP-5 copyright file."""
    tree = out_dir / f"tree-{name}"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        "Description: test documentation\n", encoding="utf-8")
    files = {**files, f"usr/share/doc/{name}/copyright":
             f"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\n"
             f"Copyright: 2024 Test\nLicense: {licence}\n text\n"}
    for rel, content in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    deb = out_dir / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    shutil.rmtree(tree)
    return deb


def fake_downloader(debs: dict[str, Path], calls: list[str] | None = None):
    """A `Downloader` that copies a prepared .deb (raising like apt for an unknown name), recording calls."""
    from data_prep.files import DataError

    def download(name: str, directory: Path) -> Path:
        if calls is not None:
            calls.append(name)
        if name not in debs:
            raise DataError(f"{name}: apt-get download failed: E: Unable to locate package {name}")
        return Path(shutil.copy(debs[name], directory / debs[name].name))

    return download
