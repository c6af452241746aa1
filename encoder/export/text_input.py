"""Text made safe for a Rust-backed tokenizer, shared by our inference API (encoder/inference.py) and the exported
sentence-transformers modules (bundle.py pastes this file into the shipped `sentence_longenc.py`).

A Python string can hold surrogate code points (U+D800..U+DFFF): `surrogateescape` decoding turns every
undecodable byte into one, and some UTF-16 handling leaves a character split into its two halves. The tokenizers
library cannot convert such a string to UTF-8 and raises `TypeError` for the whole batch. Here a lone surrogate
becomes U+FFFD (the replacement character, one per surrogate) and a high+low pair becomes the character it encodes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    if _SURROGATE.search(text) is None:  # the common case: no copy
        return text
    # UTF-16 is the one encoding where surrogate halves are code units: pairs decode to their character,
    # and the decoder's "replace" turns each lone half into U+FFFD
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def checked_text(value: Any, where: str) -> str:
    """`value` cleaned, or a TypeError naming `where` (e.g. "texts[3]") when it is not a string: `str(None)`
    would otherwise embed the word "None"."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a string, got {type(value).__name__}")
    return clean_text(value)


def checked_texts(values: Sequence[Any], name: str) -> list[str]:
    """Every item of `values` through `checked_text`, errors naming `name[index]`."""
    if isinstance(values, str):
        raise TypeError(f"{name}: expected a sequence of strings, got one string (wrap it in a list)")
    return [checked_text(value, f"{name}[{index}]") for index, value in enumerate(values)]


def clean_inputs(inputs: Sequence[Any]) -> list[Any]:
    """sentence-transformers inputs with every string cleaned: texts, and the (query, document) pairs of a
    CrossEncoder. Anything else is passed on unchanged for sentence-transformers to accept or reject."""
    out: list[Any] = []
    for item in inputs:
        if isinstance(item, str):
            out.append(clean_text(item))
        elif isinstance(item, (tuple, list)):
            out.append(type(item)(clean_text(part) if isinstance(part, str) else part for part in item))
        else:
            out.append(item)
    return out
