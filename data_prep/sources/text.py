"""Small text helpers shared by the parsers (plain text only; markup is always parsed by lxml)."""

from __future__ import annotations

import unicodedata

CJK_COUNTERS = set("章節节장부편")


def clean_inline(text: str) -> str:
    """NFC, every whitespace run (newlines, NBSP, tabs) to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def strip_numbering(heading: str) -> str:
    """Drop a numbering label from a heading: "6.2. Commands" / "Chapter 6. APT" / "第 6 章 APT" -> the words.

    Only the first three words are looked at, and only a word that is a label ("6.2.", "A.1", "6장."), so a
    heading that merely contains a number ("Using IPv6 tunnels") keeps it."""
    words = heading.split()
    cut = next((i for i, w in enumerate(words[:3]) if _is_label(w)), None)
    if cut is None or cut == len(words) - 1:
        return heading
    rest = words[cut + 1:]
    if rest and len(rest[0]) == 1 and rest[0] in CJK_COUNTERS:  # 第 6 章 ...
        rest = rest[1:]
    return " ".join(rest) if rest else heading


def _is_label(word: str) -> bool:
    core = word.rstrip(".:")
    if not core or not any(c.isdigit() for c in core):
        return False
    if all(c.isdigit() or c == "." for c in core):
        return True
    head, _, rest = core.partition(".")  # appendix labels: "A.1"
    if len(head) == 1 and head.isalpha() and rest and all(c.isdigit() or c == "." for c in rest):
        return True
    return core[:-1].isdigit() and not core[-1].isascii()  # "6장"


def letters(text: str) -> int:
    return sum(c.isalpha() for c in text)
