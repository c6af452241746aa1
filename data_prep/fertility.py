"""Tokens per character per language ("fertility"), and token counts of a corpus by source and language.

A tokenizer with short pieces for a language fits less of that language's text into an 8192-token context;
`fertility` makes this visible per language, `compare` puts several tokenizers side by side, and
`sample_texts` draws held-out text (never seen by a tokenizer trained on mlm/) to measure on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from data_prep.files import DataError, read_jsonl

CONTEXT = 8192


@dataclass(frozen=True)
class FertilityRow:
    lang: str
    chars: int
    tokens: int  # without special tokens

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.chars if self.chars else 0.0

    @property
    def chars_in_context(self) -> int:
        """Characters of this language that fit in one 8192-token sequence (`<s>` and `</s>` excluded)."""
        return int((CONTEXT - 2) / self.tokens_per_char) if self.tokens else 0


def _count(tokenizer, texts: Iterable[str]) -> tuple[int, int]:
    texts = [t for t in texts if t]
    if not texts:
        return 0, 0
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(map(len, texts)), sum(map(len, encoded))


def fertility(tokenizer, texts_by_language: Mapping[str, Iterable[str]]) -> list[FertilityRow]:
    """One row per language (sorted): characters, tokens, tokens per character, characters per 8192 tokens."""
    rows = []
    for lang in sorted(texts_by_language):
        chars, tokens = _count(tokenizer, texts_by_language[lang])
        rows.append(FertilityRow(lang, chars, tokens))
    return rows


def compare(tokenizers: Mapping[str, object], texts_by_language: Mapping[str, list[str]]) -> str:
    """A markdown table: tokens per character and characters per 8192 tokens, one column pair per tokenizer."""
    tables = {name: {r.lang: r for r in fertility(tok, texts_by_language)} for name, tok in tokenizers.items()}
    header = "| lang | chars | " + " | ".join(f"{n}: tok/char | {n}: chars/8192 tok" for n in tables) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(tables))]
    for lang in sorted(texts_by_language):
        cells = [f"{tables[n][lang].tokens_per_char:.3f} | {tables[n][lang].chars_in_context:,}" for n in tables]
        lines.append(f"| {lang} | {next(iter(tables.values()))[lang].chars:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_texts(data_dir: str | Path, source: str = "debian-handbook", max_chars: int = 200_000
                 ) -> dict[str, list[str]]:
    """Held-out text per language from `heldout/<source>/mono-<lang>/corpus.jsonl`, up to `max_chars` each."""
    root = Path(data_dir) / "heldout" / source
    out: dict[str, list[str]] = {}
    for corpus in sorted(root.glob("mono-*/corpus.jsonl")):
        lang, used = corpus.parent.name.removeprefix("mono-"), 0
        for _, row in read_jsonl(corpus):
            if used >= max_chars:
                break
            out.setdefault(lang, []).append(row["text"])
            used += len(row["text"])
    if not out:
        raise DataError(f"{root}: no mono-<lang>/corpus.jsonl (build the corpus with a held-out source first)")
    return out


def token_counts(data_dir: str | Path, tokenizer, batch: int = 256) -> dict[str, dict[str, int]]:
    """Tokens (no specials) of mlm/<lang>.jsonl by source ("source" field) and language."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for path in sorted((Path(data_dir) / "mlm").glob("*.jsonl")):
        rows = [row for _, row in read_jsonl(path)]
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            ids = tokenizer([r["text"] for r in chunk], add_special_tokens=False)["input_ids"]
            for row, piece in zip(chunk, ids):
                source = row.get("source", "")
                counts[source][path.stem] = counts[source].get(path.stem, 0) + len(piece)
    return {source: dict(sorted(langs.items())) for source, langs in sorted(counts.items())}
