"""Fetch, cache and unpack Debian packages without installing them (`apt-get download` + `dpkg-deb -x`).

    <cache>/debs/<name>_<version>_all.deb     the package as downloaded
    <cache>/debs/<name>.json                  {"package", "version", "file", "sha256", "size"}
    <cache>/unpacked/<name>-<sha12>/          its files, with a `.complete` marker written last

A second run reuses the cached .deb when its sha256 matches the record (no network), and the unpacked tree
when its marker names the same sha256. A missing tool, an unknown package, a failed download or a corrupt
.deb raises DataError naming the package; nothing half-written keeps a final name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from data_prep.files import DataError, sha256_file, write_json

log = logging.getLogger(__name__)

Downloader = Callable[[str, Path], Path]  # (package name, empty directory) -> the downloaded .deb in it


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    deb: Path  # cached .deb
    sha256: str
    size: int
    root: Path  # unpacked tree
    licence: str  # License of the copyright file's `Files: *` paragraph ("" when absent)
    licences: tuple[str, ...]  # every License name in the copyright file

    def manifest(self) -> dict:
        return {"package": self.name, "version": self.version, "sha256": self.sha256, "size": self.size,
                "licence": self.licence, "licences": list(self.licences)}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DataError(f"{package}: `{name}` is not installed; the documentation sources need Debian's "
                        f"{'apt' if name == 'apt-get' else 'dpkg'} tools (or a cache that already holds the package)")
    return path


def apt_download(name: str, directory: Path) -> Path:
    """`apt-get download NAME` into `directory`; returns the .deb (apt verifies it against the signed index)."""
    apt = _tool("apt-get", name)
    result = subprocess.run([apt, "-q", "-o", "APT::Sandbox::User=root", "download", name], cwd=directory,
                            capture_output=True, text=True, timeout=900, check=False)
    debs = sorted(directory.glob("*.deb"))
    if result.returncode != 0 or len(debs) != 1:
        hint = (" (run `apt-get update` once, or check the package name)"
                if "Unable to locate" in result.stderr or "has no installation candidate" in result.stderr else "")
        raise DataError(f"{name}: apt-get download failed{hint}: {result.stderr.strip()[-400:]}")
    return debs[0]


def deb_fields(deb: Path, name: str) -> dict[str, str]:
    """Package and Version of a .deb (dpkg-deb --field); a corrupt file raises naming the package."""
    dpkg = _tool("dpkg-deb", name)
    result = subprocess.run([dpkg, "--field", str(deb), "Package", "Version"], capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode != 0:
        raise DataError(f"{name}: {deb} is not a valid Debian package: {result.stderr.strip()[-300:]}")
    fields = HeaderParser().parsestr(result.stdout)
    if fields.get("Package") != name or not fields.get("Version"):
        raise DataError(f"{name}: {deb} holds package {fields.get('Package')!r}, not {name!r}")
    return {"package": fields["Package"], "version": fields["Version"]}


def fetch_deb(name: str, cache_dir: str | Path, download: Downloader = apt_download) -> tuple[Path, dict]:
    """The cached .deb of `name` and its record; downloads it only when the cache lacks a verified copy."""
    debs = Path(cache_dir) / "debs"
    record_path = debs / f"{name}.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        cached = debs / record["file"]
        if cached.is_file() and sha256_file(cached) == record["sha256"]:
            return cached, record
        log.warning("%s: cached %s is missing or does not match its sha256; downloading again", name, cached)
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=f".{name}-") as tmp:
        downloaded = download(name, Path(tmp))
        fields = deb_fields(downloaded, name)
        record = {**fields, "file": f"{name}_{fields['version'].split(':')[-1]}_all.deb",
                  "sha256": sha256_file(downloaded), "size": downloaded.stat().st_size}
        os.replace(downloaded, debs / record["file"])
    write_json(record_path, record)  # after the .deb: a record always names a complete file
    return debs / record["file"], record


def unpack_deb(deb: Path, name: str, sha256: str, cache_dir: str | Path) -> Path:
    """`dpkg-deb -x` into `<cache>/unpacked/<name>-<sha12>/` once; the marker is written last."""
    root = Path(cache_dir) / "unpacked" / f"{name}-{sha256[:12]}"
    marker = root / ".complete"
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == sha256:
        return root
    dpkg = _tool("dpkg-deb", name)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{name}-"))
    try:
        result = subprocess.run([dpkg, "-x", str(deb), str(tmp)], capture_output=True, text=True, timeout=900,
                                check=False)
        if result.returncode != 0:
            raise DataError(f"{name}: could not unpack {deb} (corrupt .deb?): {result.stderr.strip()[-300:]}")
        (tmp / ".complete").write_text(sha256 + "\n", encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def copyright_licences(root: Path, name: str) -> tuple[str, tuple[str, ...]]:
    """(License of the `Files: *` paragraph, every License name) from usr/share/doc/<name>/copyright (DEP-5)."""
    path = root / "usr" / "share" / "doc" / name / "copyright"
    if not path.is_file():
        return "", ()
    main, names = "", []
    for paragraph in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = HeaderParser().parsestr(paragraph.strip("\n") + "\n")
        licence = (fields.get("License") or "").split("\n")[0].strip()
        if licence:
            names.append(licence)
            if (fields.get("Files") or "").strip() == "*" and not main:
                main = licence
    if not names:  # a free-form copyright file (pre-DEP-5): say where the terms are
        return f"see usr/share/doc/{name}/copyright (free-form, no License field)", ()
    return main or names[0], tuple(dict.fromkeys(names))


def get_package(name: str, cache_dir: str | Path, download: Downloader = apt_download) -> DebPackage:
    """Fetch (or reuse) and unpack one package; see the module docstring."""
    deb, record = fetch_deb(name, cache_dir, download)
    root = unpack_deb(deb, name, record["sha256"], cache_dir)
    licence, licences = copyright_licences(root, name)
    return DebPackage(name=name, version=record["version"], deb=deb, sha256=record["sha256"], size=record["size"],
                      root=root, licence=licence, licences=licences)
