"""Specification of the pipeline's pure text rules."""

import random

import numpy as np
import pytest

from selflengthen_jax.pipeline.text import (
    EMPTY,
    META,
    REPETITION,
    UNFINISHED,
    Deduper,
    check_response,
    count_words,
    jaccard,
    language_of,
    length_biased_keep,
    near_duplicate,
    normalise,
    quality_problems,
    reference_zh_units,
    shingles,
    split_paragraphs,
)

# 26 distinct CJK ideographs, so test texts repeat only where a test wants them to.
HAN = "".join(chr(0x4E00 + 7 * i) for i in range(26))


# --- count_words -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", 0),
        ("Hello world", 2),
        ("  spaced\tout\nwords  ", 3),
        ("你好世界", 4),
        ("我爱 Python 编程", 5),
        ("abc你def", 3),  # a CJK character also separates the words around it
        ("你好，世界。", 6),  # U+FF0C full-width comma, U+3002 ideographic full stop
        ("你\u3000好", 3),  # U+3000 ideographic space is itself in the counted range
        ("ＡＢＣ！", 4),  # full-width forms U+FF00-FFEF count one each
    ],
)
def test_count_words_counts_cjk_characters_and_space_separated_words(text, words):
    assert count_words(text) == words


@pytest.mark.parametrize(
    ("char", "inside"),
    [
        ("\u4dff", False),
        ("\u4e00", True),
        ("\u9fff", True),
        ("\ua000", False),
        ("\u2fff", False),
        ("\u3000", True),
        ("\u303f", True),
        ("\u3040", False),
        ("\ufeff", False),
        ("\uff00", True),
        ("\uffef", True),
        ("\ufff0", False),
    ],
)
def test_count_words_range_edges(char, inside):
    # Two adjacent characters: two words when counted as CJK, one token otherwise.
    assert count_words(char * 2) == (2 if inside else 1)


# --- language_of ---------------------------------------------------------------


def test_language_of_uses_a_30_percent_cjk_share_of_non_space_characters():
    assert language_of("这是一段中文。") == "zh"
    assert language_of("This is English.") == "en"
    assert language_of("中文 abcdefg") == "en"  # 2 of 9 characters
    assert language_of("中文字 abcdefg") == "en"  # exactly 0.3 is not more than 0.3
    assert language_of("中文字四 abcdef") == "zh"  # 0.4
    assert language_of("  ") == "en"


# --- quality, strict rules (pipeline.rules=strict): Chinese ------------------------------------------------------------


@pytest.mark.parametrize("ending", list("。！？…”’）】』」》!?."))
def test_zh_text_ending_in_closing_punctuation_passes(ending):
    assert check_response(HAN[:10] + ending + "  \n", "zh", "strict")


@pytest.mark.parametrize("ending", ["，", "、", "：", "；", "字", "a", "1"])
def test_zh_text_ending_elsewhere_is_unfinished(ending):
    assert quality_problems(HAN[:10] + ending, "zh", rules="strict") == [UNFINISHED]


def test_zh_repeated_13_character_run_fails_but_12_passes():
    assert quality_problems(HAN[:13] + "，" + HAN[:13] + "。", "zh", rules="strict") == [REPETITION]
    assert check_response(HAN[:12] + "，" + HAN[:12] + "。", "zh", "strict")


def test_zh_repetition_ignores_whitespace():
    spaced = " ".join(HAN[:13])
    assert quality_problems(HAN[:13] + "\n" + spaced + "。", "zh", rules="strict") == [REPETITION]


def test_zh_ascii_letter_run_is_one_unit():
    # 6 ideographs + "abcdefg" is 7 units (13 characters): its repeat is no 13-gram.
    segment = HAN[:6] + "abcdefg"
    assert check_response(segment + "，" + segment + "。", "zh", "strict")
    # 12 ideographs + one English word is 13 units: repeated, it fails.
    segment = HAN[:12] + "Python"
    assert quality_problems(segment + "，" + segment + "。", "zh", rules="strict") == [REPETITION]


def test_zh_ngram_size_is_a_parameter():
    text = HAN[:3] + "，" + HAN[:3] + "。"
    assert check_response(text, "zh", "strict")
    assert quality_problems(text, "zh", rules="strict", ngram=3) == [REPETITION]


def test_zh_ignores_english_meta_words():
    assert check_response("Revised version\n" + HAN[:10] + "。", "zh", "strict")


# --- quality, strict rules: English ------------------------------------------------------------

WORDS = [f"w{i}" for i in range(40)]


def sentence(words):
    return " ".join(words) + " end."


@pytest.mark.parametrize("ending", list(".!?\"'”’)]"))
def test_en_text_ending_in_punctuation_passes(ending):
    assert check_response("It was a long day" + ending, "en", "strict")


@pytest.mark.parametrize("ending", ["word", ",", ":", ";", "-", "9"])
def test_en_text_ending_elsewhere_is_unfinished(ending):
    assert quality_problems("It was a long day " + ending, "en", rules="strict") == [UNFINISHED]


def test_en_repeated_10_word_run_fails_but_9_passes():
    ten, nine = WORDS[:10], WORDS[:9]
    assert quality_problems(sentence(ten + ["x"] + ten), "en", rules="strict") == [REPETITION]
    assert check_response(sentence(nine + ["x"] + nine), "en", "strict")


def test_en_words_are_whitespace_separated_tokens():
    # Line breaks do not hide a repeat; punctuation glued to a word makes it differ.
    ten = WORDS[:10]
    assert quality_problems(" ".join(ten) + "\n\n" + " ".join(ten) + " end.", "en", rules="strict") == [REPETITION]
    assert check_response(" ".join(ten) + ", " + " ".join(ten[:9]) + " " + ten[9] + "!", "en", "strict")


def test_en_ngram_size_is_a_parameter():
    text = "one two three one two three end."
    assert check_response(text, "en", "strict")
    assert quality_problems(text, "en", rules="strict", ngram=3) == [REPETITION]


def lines_with(meta_line_at, total=8):
    lines = [f"Line {i} tells part of the story." for i in range(total)]
    lines[meta_line_at] = "Here is the revised text."
    return "\n\n".join(lines)


@pytest.mark.parametrize(
    ("position", "flagged"),
    [(0, True), (1, True), (2, False), (4, False), (5, True), (6, True), (7, True)],
)
def test_en_meta_words_count_only_in_first_two_and_last_three_lines(position, flagged):
    assert (META in quality_problems(lines_with(position), "en", rules="strict")) is flagged


@pytest.mark.parametrize(
    "line",
    [
        "REVISED.",
        "Revision notes follow.",
        "My response is below.",
        "Version two.",
        "Paragraphs added.",
        "revisions.",
    ],
)
def test_en_meta_words_match_case_insensitively_as_word_starts(line):
    assert quality_problems(line, "en", rules="strict") == [META]


@pytest.mark.parametrize(
    "line", ["A responsible plan.", "The conversion worked.", "Unrevised ideas."]
)
def test_en_meta_words_inside_other_words_do_not_count(line):
    assert check_response(line, "en", "strict")


def test_en_meta_words_are_a_parameter():
    assert not quality_problems("Here is the revised text.", "en", rules="strict", meta_words=("draft",))
    assert quality_problems("My draft is done.", "en", rules="strict", meta_words=("draft",)) == [META]


def test_problems_are_all_listed():
    text = "Revised: " + " ".join(WORDS[:10] * 2)
    assert quality_problems(text, "en", rules="strict") == [UNFINISHED, REPETITION, META]


@pytest.mark.parametrize("language", ["zh", "en"])
@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_fails(language, text):
    assert quality_problems(text, language, rules="strict") == [EMPTY]
    assert not check_response(text, language, "strict")


def test_unknown_language_is_rejected():
    with pytest.raises(ValueError, match="unsupported language 'fr'"):
        check_response("Bonjour.", "fr")


# --- quality, the reference's rules (the default; QwenLM/Self-Lengthen utils.py) --------


@pytest.mark.parametrize("ending", list("。！？”)]}>）】’…`"))
def test_reference_zh_endings(ending):
    assert check_response(HAN[:10] + ending + " \n", "zh")


@pytest.mark.parametrize("ending", list(".!?\"'，；：字a1") + ["』", "」", "》", "～"])
def test_reference_zh_rejects_every_other_ending(ending):
    # The reference's zh set has no ASCII . ! ? (the strict rules accept them).
    assert quality_problems(HAN[:10] + ending, "zh") == [UNFINISHED]


@pytest.mark.parametrize("ending", list(".!?,;:-\"')]}>`"))
def test_reference_en_endings(ending):
    assert check_response("It was a long day" + ending + "\n\n", "en")


@pytest.mark.parametrize("ending", ["word", "9", "”", "’", "…", "*"])
def test_reference_en_rejects_every_other_ending(ending):
    assert quality_problems("It was a long day " + ending, "en") == [UNFINISHED]


def test_reference_zh_units_make_each_ascii_run_one_unit():
    # Letters, digits, spaces, newlines and ASCII punctuation in a row form one unit.
    assert reference_zh_units("中文 abc, 12\n字。") == ["中", "文", " abc, 12\n", "字", "。"]
    assert reference_zh_units("ab") == ["ab"]
    assert reference_zh_units("") == []


def test_reference_zh_repetition_counts_13_units():
    assert quality_problems(HAN[:13] + "，" + HAN[:13] + "。", "zh") == [REPETITION]
    assert check_response(HAN[:12] + "，" + HAN[:12] + "。", "zh")
    # 12 ideographs and the run " v2.0 " make 13 units: repeated, they fail.
    segment = HAN[:12] + " v2.0 "
    assert quality_problems(segment + "，" + segment + "。", "zh") == [REPETITION]
    # Whitespace is not skipped: spaced-out ideographs are other units ("一 " is one).
    assert check_response(HAN[:13] + "，" + " ".join(HAN[:13]) + "。", "zh")


def test_reference_zh_has_no_meta_word_check():
    assert check_response("Revised version\n" + HAN[:10] + "。", "zh")


def test_reference_en_repetition_counts_10_whitespace_words():
    ten, nine = WORDS[:10], WORDS[:9]
    assert quality_problems(sentence(ten + ["x"] + ten), "en") == [REPETITION]
    assert check_response(sentence(nine + ["x"] + nine), "en")


@pytest.mark.parametrize(
    ("position", "flagged"),
    # "\n\n"-joined: lines 0, blank, 1, blank, ..., 7, so the first two lines are line 0
    # and a blank one and the last three are line 6, a blank one and line 7.
    [(0, True), (1, False), (5, False), (6, True), (7, True)],
)
def test_reference_en_meta_words_in_first_two_and_last_three_lines_blank_ones_counted(position, flagged):
    assert (META in quality_problems(lines_with(position), "en")) is flagged


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("Here is the revised text.", True),
        ("The conversion worked.", True),  # "version" inside another word counts
        ("Two responses.", True),
        ("Two paragraphs added.", True),
        ("Paragraphs added.", False),
        ("REVISED.", False),  # the search is case-sensitive, words in lowercase
        ("Revision notes follow.", False),
        ("A responsible plan.", False),
    ],
)
def test_reference_en_meta_words_are_a_lowercase_substring_search(line, flagged):
    assert (META in quality_problems(line, "en")) is flagged


@pytest.mark.parametrize("language", ["zh", "en"])
@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_reference_empty_text_fails(language, text):
    assert quality_problems(text, language) == [EMPTY]
    assert not check_response(text, language)


def test_reference_rules_look_at_the_right_stripped_text_only():
    # Leading blank lines stay and take the first two places, trailing ones do not.
    body = "the revised text\nb.\nc.\nd.\ne.\nf."
    assert quality_problems(body, "en") == [META]
    assert check_response("\n\n" + body, "en")
    assert quality_problems("a.\nb.\nc.\nd.\nthe response.\n\n\n", "en") == [META]


def test_unknown_rules_are_rejected():
    with pytest.raises(ValueError, match="unknown quality rules 'loose'"):
        check_response("Fine.", "en", "loose")


# --- length_biased_keep (the reference's drop_short) ------------------------------


def test_keep_flags_are_in_original_order_and_deterministic_per_seed():
    lengths = [900, 100, 500, 300, 700, 200, 800, 400, 600, 1000]
    first = length_biased_keep(lengths, np.random.default_rng(3))
    again = length_biased_keep(lengths, np.random.default_rng(3))
    assert first == again
    assert len(first) == len(lengths) and all(isinstance(flag, bool) for flag in first)


def test_empty_input_keeps_nothing():
    assert length_biased_keep([], np.random.default_rng(0)) == []


def test_a_sample_is_kept_when_its_draw_exceeds_two_rank_cubed():
    # utils.py drop_short: rank = 1 - sorted(lengths).index(length) / n, kept when
    # random() > 2 * rank ** 3. Same draws, same decisions.
    lengths = [50, 10, 90, 30, 70, 20, 100, 40, 80, 60]
    draws = np.random.default_rng(11).random(10)
    ordered = sorted(lengths)
    expected = [bool(u > 2 * (1 - ordered.index(n) / 10) ** 3) for u, n in zip(draws, lengths)]
    assert length_biased_keep(lengths, np.random.default_rng(11)) == expected


def test_keep_rates_follow_the_rank():
    lengths = [50, 10, 90, 30, 70, 20, 100, 40, 80, 60]  # shuffled so order matters
    rng = np.random.default_rng(0)
    draws = 3000
    kept = np.zeros(10)
    for _ in range(draws):
        kept += length_biased_keep(lengths, rng)
    for index, length in enumerate(lengths):
        rank = 1 - sorted(lengths).index(length) / 10
        assert abs(kept[index] / draws - max(0.0, 1 - 2 * rank**3)) < 0.03, index
    # Rank >= 0.8 (the three shortest of ten) gives 2 r^3 >= 1: never kept.
    assert kept[lengths.index(10)] == kept[lengths.index(20)] == kept[lengths.index(30)] == 0
    # The longest has rank 1/n: kept with probability 1 - 2/n^3 = 0.998.
    assert kept[lengths.index(100)] / draws > 0.99


def test_equal_lengths_share_the_lowest_position_by_default():
    # Ten equal lengths all have position 0, rank 1: 2 r^3 = 2, so none is ever kept.
    rng = np.random.default_rng(1)
    assert not any(any(length_biased_keep([7] * 10, rng)) for _ in range(200))
    # Ties below the longest: [5, 5, 9, 9] ranks 1, 1, 0.5, 0.5.
    kept = np.zeros(4)
    for _ in range(2000):
        kept += length_biased_keep([5, 9, 5, 9], rng)
    assert kept[0] == kept[2] == 0
    assert abs(kept[1] / 2000 - 0.75) < 0.04 and abs(kept[3] / 2000 - 0.75) < 0.04


def test_ordered_ties_rank_equal_lengths_by_original_index():
    rng = np.random.default_rng(1)
    kept = np.zeros(10)
    for _ in range(500):
        kept += length_biased_keep([7] * 10, rng, ties="ordered")
    assert kept[0] == kept[1] == kept[2] == 0
    assert kept[9] > 490
    assert list(kept[3:]) == sorted(kept[3:])


def test_unknown_ties_rule_is_rejected():
    with pytest.raises(ValueError, match="unknown ties rule"):
        length_biased_keep([1, 2], np.random.default_rng(0), ties="random")


# --- split_paragraphs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "paragraphs"),
    [
        ("a\n\nb\n\nc", ["a", "b", "c"]),
        ("  a  \n\n\n \t \nb\n\n\n\nc\n", ["a", "b", "c"]),  # several / whitespace-only blank lines
        ("a\nx\n\nb\n\nc", ["a\nx", "b", "c"]),  # > 2 blocks: single newlines stay inside
        ("a\nb\n\nc", ["a", "b", "c"]),  # only 2 blocks: split on single newlines
        ("a\nb\nc", ["a", "b", "c"]),
        ("a\r\n\r\nb\r\n\r\nc", ["a", "b", "c"]),
        ("one paragraph", ["one paragraph"]),
        ("", []),
        ("\n \n", []),
    ],
)
def test_split_paragraphs(text, paragraphs):
    assert split_paragraphs(text) == paragraphs


# --- de-duplication ------------------------------------------------------------------


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("  Write a STORY,  please!! ") == "write a story please"
    assert normalise("写一篇，关于春天的文章。") == "写一篇关于春天的文章"
    assert normalise("用 Python 写一个 web app") == "用python写一个web app"
    assert normalise("Ｗｒｉｔｅ") == "write"  # full-width letters fold too


def test_shingles_are_five_characters_of_the_normalised_text():
    assert shingles("Abc-def") == {"abc d", "bc de", "c def"}
    assert shingles("Hi!") == {"hi"}  # shorter than a shingle: the text itself
    assert shingles("?!") == frozenset()


def test_exact_duplicates_after_normalisation():
    assert near_duplicate("Write a story about the sea.", "write a STORY about  the sea")
    assert near_duplicate("写一篇关于春天的文章。", "写一篇，关于春天的文章")


def test_near_duplicate_threshold_is_inclusive():
    a = "Write a long essay about the history of tea in China."
    b = "Write a long essay about the history of coffee in China."
    score = jaccard(shingles(a), shingles(b))
    assert 0.4 < score < 0.9
    assert near_duplicate(a, b, threshold=score)
    assert not near_duplicate(a, b, threshold=score + 1e-9)


def test_near_duplicate_defaults_work_for_both_languages():
    assert near_duplicate(
        "Write a 5,000-word story about a lighthouse keeper who receives letters from the sea.",
        "Write a 5,000-word story about a lighthouse keeper who receives letters from the ocean.",
    )
    assert not near_duplicate(
        "Write a 5,000-word story about a lighthouse keeper.",
        "Draft a detailed business plan for a bakery in Paris.",
    )
    assert near_duplicate(
        "请写一篇约五千字的短篇小说，讲述一位在江南古镇经营修表铺的老人的故事。",
        "请写一篇约五千字的短篇小说，讲述一位在江南小镇经营修表铺的老人的故事。",
    )
    assert not near_duplicate("请写一篇关于春天的散文。", "撰写一份新能源汽车行业调研报告。")


def test_deduper_keeps_first_and_drops_exact_and_near_duplicates():
    dedupe = Deduper()
    assert dedupe.add("Write a long story about a dragon who learns to paint.")
    assert not dedupe.add("write a long story about a dragon who learns to paint!")
    assert not dedupe.add("Write a long story about a dragon who learned to paint.")
    assert dedupe.add("Write a travel guide to the Scottish Highlands.")
    assert len(dedupe) == 2


def test_deduper_check_does_not_store():
    dedupe = Deduper()
    assert not dedupe.is_duplicate("Write a poem.")
    assert not dedupe.is_duplicate("Write a poem.")
    assert len(dedupe) == 0


def test_deduper_matches_a_pairwise_scan():
    rng = random.Random(0)
    topics = ["dragons", "the sea", "a village", "Rome", "jazz", "robots", "tea", "volcanoes"]
    genres = ["story", "essay", "report", "speech", "letter", "guide"]
    texts = [
        f"Write a {rng.choice(genres)} about {rng.choice(topics)} and {rng.choice(topics)}"
        f"{rng.choice(['', ' in detail', ', please', ' of 3000 words'])}."
        for _ in range(300)
    ]
    kept = []
    for text in texts:
        if not any(near_duplicate(text, k) for k in kept):
            kept.append(text)
    dedupe = Deduper()
    assert [t for t in texts if dedupe.add(t)] == kept
    assert 10 < len(kept) < 300


def test_deduper_threshold_must_be_a_fraction():
    with pytest.raises(ValueError, match="threshold"):
        Deduper(threshold=0)
    with pytest.raises(ValueError, match="threshold"):
        Deduper(threshold=1.5)
