"""Text cleaning shared by every stage that reads raw documents (the shards and the tokenizer), so both skip
and count the same documents for the same reasons."""

from __future__ import annotations

import re
import unicodedata

NORMAL_FORMS = ("NFC", "NFKC", "NFD", "NFKD")
# C0/C1 control characters except tab and newline; carriage returns become newlines first
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")


def clean_text(text: object, normalization: str = "NFC", max_chars: int | None = None) -> tuple[str, str]:
    """(cleaned text, "" or the reason to skip it). Drops empty and control-only lines inside the text; a text
    longer than `max_chars` after cleaning is skipped as `too_long_chars` (almost always a dump or junk)."""
    if text is None:
        return "", "missing_text"
    if not isinstance(text, str):
        return "", "not_a_string"
    if not text.strip():
        return "", "empty"
    text = unicodedata.normalize(normalization, text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [_CONTROL.sub("", line).strip() for line in text.split("\n")]
    kept = [line for line in lines if line]
    if not kept:
        return "", "control_only"
    cleaned = "\n".join(kept)
    if max_chars is not None and len(cleaned) > max_chars:
        return "", "too_long_chars"
    return cleaned, ""
