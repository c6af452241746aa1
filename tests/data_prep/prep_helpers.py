"""Helpers for the data_prep tests (a module of its own: `conftest` names clash across test folders)."""

from __future__ import annotations

from pathlib import Path

import django
import polib

TOKENIZER_LANGS = ("de", "fr", "ru", "uk", "ar", "fa", "hi", "zh_Hans", "ja", "ko", "el", "he", "th")


def django_texts(langs=TOKENIZER_LANGS, every: int = 1, offset: int = 0) -> list[str]:
    """msgids and msgstrs of the installed Django catalogs (every n-th entry, for train/test splits)."""
    root = Path(django.__file__).parent
    texts = []
    for lang in langs:
        for po in sorted(root.glob(f"**/locale/{lang}/LC_MESSAGES/django.po")):
            for i, entry in enumerate(polib.pofile(str(po))):
                if i % every == offset and entry.msgstr and not entry.fuzzy:
                    texts += [entry.msgstr, entry.msgid]
    return texts
