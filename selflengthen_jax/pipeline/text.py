"""Pure text rules of the Self-Lengthen pipeline: word counts, quality filters,
length-biased down-sampling, paragraph splitting, instruction de-duplication.

The quality filter comes in two rule sets: `reference` (the default) decides exactly
as QwenLM/Self-Lengthen's `check_response` does for each language, and `strict` is
this project's own, tighter variant (more closing marks for zh, word-start meta words
in non-blank lines, case-insensitive).

Everything here is model-free and deterministic (given a seeded rng), so the data
the pipeline keeps can be explained and tested without a checkpoint.
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from collections.abc import Iterable
from typing import Literal

import numpy as np

Language = Literal["zh", "en"]
LANGUAGES: tuple[str, ...] = ("zh", "en")

# CJK ideographs, CJK symbols/punctuation, full-width forms: each one is a "word".
_CJK = re.compile("[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")

# The reference's ending marks, per language (its "..." entry can never equal one
# character, so it is left out). Note the zh set has no ASCII . ! ? and the en set
# counts , ; : - as endings.
REFERENCE_ZH_CLOSING = frozenset("。！？”)]}>）】’…`")
REFERENCE_EN_CLOSING = frozenset(".!?,;:-\"')]}>`")
RULES: tuple[str, ...] = ("reference", "strict")

# The strict rules' characters a finished text may end with.
ZH_CLOSING = frozenset("。！？!?.…”’\"'）)】』」》〉〕〗～~")
EN_CLOSING = frozenset(".!?\"'”’)]}…")

# Extenders like to talk about their own output ("Revised version: ..."); such
# words at the top or bottom of an English answer mark it as meta-commentary.
META_WORDS: tuple[str, ...] = ("revised", "revision", "response", "version", "paragraph")
DEFAULT_NGRAM: dict[str, int] = {"zh": 13, "en": 10}
META_HEAD_LINES = 2
META_TAIL_LINES = 3

# Stable problem labels, so summaries can count them across a run.
EMPTY = "empty"
UNFINISHED = "unfinished ending"
REPETITION = "repetition"
META = "meta words"

_SPACE_NEXT_TO_CJK = re.compile(f" (?={_CJK.pattern})|(?<={_CJK.pattern}) ")

# Strict zh repetition units: a run of ASCII letters (an English word inside Chinese
# text) is one unit, every other non-space character is its own unit.
_ZH_UNIT = re.compile(r"[A-Za-z]+|\S")


def check_language(language: str) -> str:
    """Fail early and clearly on a language the pipeline has no rules for."""
    if language not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; expected one of {LANGUAGES}")
    return language


def count_words(text: str) -> int:
    """Length in the paper's unit: CJK characters one each, plus space-split words."""
    cjk = len(_CJK.findall(text))
    return cjk + len(_CJK.sub(" ", text).split())


def language_of(text: str) -> Language:
    """The text's language: zh when more than 30% of its non-space characters are
    CJK, else en (enough to pick the rules for mixed texts)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return "en"
    cjk = sum(1 for c in chars if _CJK.match(c))
    return "zh" if cjk / len(chars) > 0.3 else "en"


def has_repeated_ngram(units: list[str], n: int) -> bool:
    """True when some run of `n` consecutive units occurs twice (overlaps count):
    the signature of a model stuck in a loop."""
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    for i in range(len(units) - n + 1):
        gram = tuple(units[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def reference_zh_units(text: str) -> list[str]:
    """The reference's zh repetition units: every run of ASCII characters (letters,
    digits, spaces, newlines, ASCII punctuation) is one unit, every other character is
    its own unit."""
    units: list[str] = []
    previous_ascii = False
    for char in text:
        if char.isascii() and previous_ascii:
            units[-1] += char
        else:
            units.append(char)
        previous_ascii = char.isascii()
    return units


def check_rules(rules: str) -> str:
    """Fail early and clearly on an unknown rule set."""
    if rules not in RULES:
        raise ValueError(f"unknown quality rules {rules!r}; expected one of {RULES}")
    return rules


def _meta_pattern(meta_words: Iterable[str]) -> re.Pattern[str]:
    words = "|".join(re.escape(w) for w in meta_words)
    # Word start only, so "Revised" and "versions" match but "conversion" does not.
    return re.compile(rf"\b(?:{words})", re.IGNORECASE)


def _reference_problems(text: str, language: str, n: int, meta_words: Iterable[str]) -> list[str]:
    """The reference's checks: the right-stripped text ends in one of its marks; no
    n-gram of units repeats; for en, no meta word occurs (case-sensitive substring) in
    the first 2 or last 3 lines of the text split on newlines, blank lines included."""
    body = text.rstrip()
    if not body:
        return [EMPTY]
    problems = []
    closing = REFERENCE_ZH_CLOSING if language == "zh" else REFERENCE_EN_CLOSING
    if body[-1] not in closing:
        problems.append(UNFINISHED)
    units = reference_zh_units(body) if language == "zh" else body.split()
    if has_repeated_ngram(units, n):
        problems.append(REPETITION)
    if language == "en":
        lines = body.split("\n")
        edges = "\n".join(lines[:META_HEAD_LINES] + lines[-META_TAIL_LINES:])
        if any(word in edges for word in meta_words):
            problems.append(META)
    return problems


def _strict_problems(text: str, language: str, n: int, meta_words: Iterable[str]) -> list[str]:
    """This project's stricter checks: more closing marks, letter-run zh units, and
    case-insensitive word-start meta words in the first 2 and last 3 non-blank lines."""
    stripped = text.strip()
    if not stripped:
        return [EMPTY]
    problems = []
    closing = ZH_CLOSING if language == "zh" else EN_CLOSING
    if stripped[-1] not in closing:
        problems.append(UNFINISHED)
    units = _ZH_UNIT.findall(stripped) if language == "zh" else stripped.split()
    if has_repeated_ngram(units, n):
        problems.append(REPETITION)
    if language == "en":
        lines = [line for line in stripped.splitlines() if line.strip()]
        edges = lines[:META_HEAD_LINES] + lines[META_HEAD_LINES:][-META_TAIL_LINES:]
        pattern = _meta_pattern(meta_words)
        if any(pattern.search(line) for line in edges):
            problems.append(META)
    return problems


def quality_problems(
    text: str,
    language: str,
    *,
    rules: str = "reference",
    ngram: int | None = None,
    meta_words: Iterable[str] = META_WORDS,
) -> list[str]:
    """Why `text` should not become training data (empty list: it passes).

    `ngram` defaults to 13 (zh units) or 10 (en words); `meta_words` are only checked
    for English. `rules` picks the reference's checks or the strict ones.
    """
    check_language(language)
    check_rules(rules)
    n = DEFAULT_NGRAM[language] if ngram is None else ngram
    check = _reference_problems if rules == "reference" else _strict_problems
    return check(text, language, n, tuple(meta_words))


def check_response(
    text: str, language: str, rules: str = "reference", *, ngram: int | None = None
) -> bool:
    """True when `text` passes the quality filter of `rules` (the reference's
    `check_response` by default)."""
    return not quality_problems(text, language, rules=rules, ngram=ngram)


TIES: tuple[str, ...] = ("shared", "ordered")


def length_biased_keep(lengths: list[int], rng: np.random.Generator,
                       ties: str = "shared") -> list[bool]:
    """Keep flags (original order) that thin out short samples, as the reference's
    `drop_short` does.

    Rank r = 1 - i/n, where i is the sample's position among the sorted lengths; a
    sample is kept when a uniform draw exceeds 2 r^3. So the shortest fifth is always
    dropped and the longest samples almost always kept. With `ties="shared"` (the
    reference) equal lengths all take the lowest position of their value; "ordered"
    ranks them by their original order instead.
    """
    if ties not in TIES:
        raise ValueError(f"unknown ties rule {ties!r}; expected one of {TIES}")
    n = len(lengths)
    position = np.empty(n)
    if ties == "shared":
        ordered = sorted(lengths)
        first = {}
        for i, length in enumerate(ordered):
            first.setdefault(length, i)
        position[:] = [first[length] for length in lengths]
    else:
        for i, index in enumerate(sorted(range(n), key=lambda k: (lengths[k], k))):
            position[index] = i
    draws = rng.random(n)
    return [bool(u > 2.0 * (1.0 - i / n) ** 3) for u, i in zip(draws, position, strict=True)]


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs split on blank lines; texts with <= 2 such blocks (models often
    use single newlines) are split on single newlines instead."""
    text = text.replace("\r\n", "\n")
    blocks = [b.strip() for b in re.split(r"\n[ \t]*\n", text)]
    blocks = [b for b in blocks if b]
    if len(blocks) > 2:
        return blocks
    lines = [line.strip() for line in text.split("\n")]
    return [line for line in lines if line]


def normalise(text: str) -> str:
    """The form in which two instructions are compared: NFKC, case-folded,
    punctuation and symbols turned into spaces, single spaces kept only between
    non-CJK words (Chinese has none, so "写一篇，关于" equals "写一篇关于")."""
    chars = unicodedata.normalize("NFKC", text).casefold()
    spaced = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in chars)
    return _SPACE_NEXT_TO_CJK.sub("", " ".join(spaced.split()))


def shingles(text: str, size: int = 5) -> frozenset[str]:
    """Character `size`-grams of the normalised text (the text itself if shorter)."""
    norm = normalise(text)
    if len(norm) <= size:
        return frozenset([norm]) if norm else frozenset()
    return frozenset(norm[i : i + size] for i in range(len(norm) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b|, 0 for two empty sets."""
    if not a and not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def near_duplicate(a: str, b: str, threshold: float = 0.7, size: int = 5) -> bool:
    """Same instruction after normalisation, or shingle Jaccard >= threshold."""
    if normalise(a) == normalise(b):
        return True
    return jaccard(shingles(a, size), shingles(b, size)) >= threshold


class Deduper:
    """Streaming instruction de-duplicator: drops a text equal to a kept one after
    normalisation, or with shingle Jaccard >= threshold against a kept one.

    An inverted index (shingle -> kept instruction numbers) turns each check into
    one numpy bincount over the postings of the new text's shingles, giving the
    exact overlap with every kept instruction at once: same answers as a pairwise
    scan, about a second for 5,000 instructions.
    """

    def __init__(self, threshold: float = 0.7, size: int = 5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.size = size
        self._exact: set[str] = set()
        self._vocab: dict[str, int] = {}
        self._postings: list[array] = []
        self._sizes = array("i")

    def __len__(self) -> int:
        return len(self._sizes)

    def is_duplicate(self, text: str) -> bool:
        """True when `text` matches an instruction already added (nothing stored)."""
        if normalise(text) in self._exact:
            return True
        grams = shingles(text, self.size)
        known = [self._vocab[g] for g in grams if g in self._vocab]
        if not known:
            return False
        hits = np.concatenate([np.frombuffer(self._postings[i], dtype=np.int32) for i in known])
        inter = np.bincount(hits, minlength=len(self)).astype(np.float64)
        union = len(grams) + np.frombuffer(self._sizes, dtype=np.int32) - inter
        return bool(np.any(inter / union >= self.threshold))

    def add(self, text: str) -> bool:
        """Record `text` unless it duplicates a kept one; True when it was new."""
        if self.is_duplicate(text):
            return False
        number = len(self)
        grams = shingles(text, self.size)
        self._exact.add(normalise(text))
        self._sizes.append(len(grams))
        for gram in grams:
            if gram not in self._vocab:
                self._vocab[gram] = len(self._postings)
                self._postings.append(array("i"))
            self._postings[self._vocab[gram]].append(number)
        return True
