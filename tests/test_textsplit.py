"""Tests for sophon_core.textsplit: examples plus hypothesis properties.

The properties check the implementation against a small, deliberately naive
reference of the contract (break positions, whitespace runs, boundary levels)
written independently below.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import random
import re
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sophon_core.textsplit import split_text, utf16_len

PROPS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ZWJ = "\u200d"
THUMB = "\U0001f44d\U0001f3fd"  # 👍🏽 (4 units)
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧 (8 units)
FR = "\U0001f1eb\U0001f1f7"  # 🇫🇷
DE = "\U0001f1e9\U0001f1ea"  # 🇩🇪
E_ACUTE = "e\u0301"
ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"  # tag sequence
TERMINATORS = ".!?\u2026\u3002\uff01\uff1f"
CLOSERS = "\"')]}\u2019\u201d\u00bb\u300d\u300f\uff09"


# --------------------------------------------------------------------------- reference


def is_ri(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


@functools.cache
def attaches(ch: str) -> bool:
    """No break is allowed before ch (combining mark, ZWJ, VS, skin tone, tag)."""
    o = ord(ch)
    return (
        ch == ZWJ
        or unicodedata.combining(ch) != 0
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or 0xFE00 <= o <= 0xFE0F
        or 0xE0100 <= o <= 0xE01EF
        or 0x1F3FB <= o <= 0x1F3FF
        or 0xE0020 <= o <= 0xE007F
    )


def ref_breaks(text: str) -> list[int]:
    """Sorted positions 0 < i < len(text) where the contract allows a cut."""
    out = []
    ri_run = 0  # regional indicators in the run ending at text[i-1]
    for i in range(1, len(text)):
        prev, ch = text[i - 1], text[i]
        if prev < "\u0300" and ch < "\u0300":  # fast path: nothing below U+0300 joins
            ri_run = 0
            if not (prev == "\r" and ch == "\n"):
                out.append(i)
            continue
        ri_run = ri_run + 1 if is_ri(prev) else 0
        if prev == "\r" and ch == "\n":
            continue
        if prev == ZWJ or attaches(ch):
            continue
        if is_ri(prev) and is_ri(ch) and ri_run % 2 == 1:
            continue
        out.append(i)
    return out


def clusters(text: str) -> list[str]:
    cuts = [0, *ref_breaks(text), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(cuts)]


def line_breaks(run: str) -> int:
    return sum(1 for line in run.splitlines(keepends=True) if line.splitlines()[0] != line)


def level_of(text: str, a: int, b: int) -> int:
    """0 paragraph, 1 line, 2 sentence, 3 word, for the whitespace run text[a:b]."""
    run = text[a:b]
    if line_breaks(run) >= 2 or "\u2029" in run:
        return 0
    if line_breaks(run) == 1:
        return 1
    tail = text[max(0, a - 3) : a]
    for closers in range(3):  # a terminator, then up to two closing quotes/brackets
        end = len(tail) - closers
        if end > 0 and all(c in CLOSERS for c in tail[end:]) and tail[end - 1] in TERMINATORS:
            return 2
    return 3


class Ref:
    """Reference facts about one text, computed once."""

    def __init__(self, text: str) -> None:
        self.breaks = ref_breaks(text)
        self.break_set = set(self.breaks)
        spans = [m.span() for m in re.finditer(r"\s+", text)]
        # interior whitespace runs (not leading/trailing) with their boundary level
        self.runs = [(a, b, level_of(text, a, b)) for a, b in spans if a > 0 and b < len(text)]
        self.content_end = len(text.rstrip())
        # units[i] = utf16_len(text[:i])
        self.units = [0, *itertools.accumulate(2 if ord(c) > 0xFFFF else 1 for c in text)]

    def window_end(self, start: int, limit: int) -> int:
        """Largest e with utf16_len(text[start:e]) <= limit."""
        return bisect.bisect_right(self.units, self.units[start] + limit) - 1

    def last_break(self, lo: int, hi: int) -> int | None:
        """Latest break in [lo, hi]."""
        i = bisect.bisect_right(self.breaks, hi) - 1
        return self.breaks[i] if i >= 0 and self.breaks[i] >= lo else None

    def has_break_between(self, lo: int, hi: int) -> bool:
        """Any break strictly inside (lo, hi)?"""
        return self.last_break(lo + 1, hi - 1) is not None


_refs: dict[str, Ref] = {}


def ref(text: str) -> Ref:
    if text not in _refs:
        _refs.clear()
        _refs[text] = Ref(text)
    return _refs[text]


def bounds(parts: list[str]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for part in parts:
        out.append((pos, pos + len(part)))
        pos += len(part)
    return out


def check_basic(text: str, limit: int) -> list[str]:
    """The contract's invariants that hold for every input; returns the parts."""
    parts = split_text(text, limit)
    assert "".join(parts) == text
    assert all(part for part in parts), parts
    assert all(utf16_len(part) <= limit for part in parts), [utf16_len(p) for p in parts]
    if not text:
        assert parts == []
    elif utf16_len(text) <= limit:
        assert parts == [text]
    else:
        assert len(parts) >= 2
    facts = ref(text)
    for (s, q), part in zip(bounds(parts), parts[:-1]):
        if q in facts.break_set:
            continue
        # Only a single cluster longer than the limit may be cut inside.
        assert not facts.has_break_between(s, q), (text, parts)
        assert utf16_len(part) + utf16_len(text[q]) > limit, (text, parts)  # cut as late as possible
    return parts


def is_pathological_fragment(part: str, limit: int) -> bool:
    """A part cut from inside one cluster longer than the limit."""
    return utf16_len(part) >= limit - 1 and len(clusters(part)) == 1


# --------------------------------------------------------------------------- examples


def test_utf16_len():
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("é") == 1
    assert utf16_len("\U0001f600") == 2
    assert utf16_len(THUMB) == 4
    assert utf16_len(FAMILY) == 8
    assert utf16_len("\ud83d") == 1  # a lone surrogate still counts one unit


def test_empty_and_fitting():
    assert split_text("") == []
    assert split_text("hello") == ["hello"]
    assert split_text("x" * 1600) == ["x" * 1600]
    assert split_text("\U0001f600" * 800) == ["\U0001f600" * 800]  # exactly 1600 units
    assert split_text("\U0001f600" * 801) == ["\U0001f600" * 800, "\U0001f600"]
    assert split_text("   ", 16) == ["   "]


@pytest.mark.parametrize("limit", [15, 0, -1])
def test_limit_below_16_raises(limit):
    with pytest.raises(ValueError, match="limit must be >= 16"):
        split_text("hello world", limit)


def test_limit_16_accepted():
    assert split_text("hello world", 16) == ["hello world"]


def test_non_int_limit_rejected():
    with pytest.raises(TypeError):
        split_text("hello", 16.5)  # type: ignore[arg-type]


def _sentences(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "Sophon", "answers"]
    out = ""
    while len(out) < n_chars:
        out += " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + ". "
    body = out[: n_chars - 1]
    if body.endswith(" "):
        body = body[:-1] + "s"
    return body + "."  # exactly n_chars long


def test_1601_char_reply_splits_at_the_paragraph():
    first = _sentences(1000, 1)
    second = _sentences(1601 - len(first) - 2, 2)
    text = first + "\n\n" + second
    assert len(text) == 1601
    assert split_text(text) == [first + "\n\n", second]


def test_latest_paragraph_beats_later_line_and_sentence():
    text = "Intro line.\n\nSecond para.\nA line. More words here and here"
    assert split_text(text, 45) == ["Intro line.\n\n", "Second para.\nA line. More words here and here"]
    # without the blank line, the latest line break wins over later sentence ends
    text = "Intro line.\nSecond. More. Words here and here too"
    assert split_text(text, 40) == ["Intro line.\n", "Second. More. Words here and here too"]


def test_paragraph_whitespace_that_overflows_starts_the_next_part():
    text = "a" * 15 + "\n\n" + "b" * 5
    assert split_text(text, 16) == ["a" * 15 + "\n", "\n" + "b" * 5]


def test_sentences():
    text = "One two three. Four five six! Seven eight nine? Ten\u2026 eleven."
    parts = split_text(text, 24)
    assert parts == ["One two three. ", "Four five six! ", "Seven eight nine? Ten\u2026 ", "eleven."]


def test_sentence_end_with_closing_quote():
    text = 'He said "Stop." Then he left the room'
    assert split_text(text, 30) == ['He said "Stop." ', "Then he left the room"]


def test_cjk_sentence_ends():
    text = "\u4f60\u597d\u3002 " + "\u4e16\u754c" * 8 + "\uff01"
    assert split_text(text, 17) == ["\u4f60\u597d\u3002 ", "\u4e16\u754c" * 8 + "\uff01"]
    # CJK without spaces: a hard cut, but right after 。 when there is one
    text = "\u4f60" * 10 + "\u3002" + "\u597d" * 10
    assert split_text(text, 16) == ["\u4f60" * 10 + "\u3002", "\u597d" * 10]


def test_words():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    assert split_text(text, 17) == ["alpha beta gamma ", "delta epsilon ", "zeta eta theta"]
    # "alpha beta gamma" is exactly 16: the space after it overflows and starts the next part
    assert split_text(text, 16) == ["alpha beta gamma", " delta epsilon ", "zeta eta theta"]


def test_trailing_whitespace_stays_with_the_last_words():
    assert split_text("aaaa bbbb cccc   ", 16) == ["aaaa bbbb ", "cccc   "]


def test_hard_cut_of_a_2000_char_word():
    assert split_text("x" * 2000) == ["x" * 1600, "x" * 400]
    assert split_text("see " + "x" * 2000 + " ok") == ["see ", "x" * 1600, "x" * 400 + " ok"]


@pytest.mark.parametrize(
    "cluster",
    [THUMB, FAMILY, FR, E_ACUTE, "\u2764\ufe0f", ENGLAND],
    ids=["skin-tone", "zwj-family", "flag", "combining", "variation-selector", "tag-flag"],
)
def test_cluster_straddling_the_limit_stays_whole(cluster):
    for pad in range(1, 16):
        text = "a" * pad + cluster + "bc"
        if utf16_len(text) <= 16:
            continue
        parts = split_text(text, 16)
        assert "".join(parts) == text
        assert any(cluster in part for part in parts), (pad, parts)


def test_flag_pairs_counted_from_the_start_of_the_run():
    text = "a" * 11 + FR + DE
    assert split_text(text, 16) == ["a" * 11 + FR, DE]


def test_crlf_not_split():
    text = "a" * 15 + "\r\n" + "b" * 5
    assert split_text(text, 16) == ["a" * 15, "\r\n" + "b" * 5]
    assert all(not p.endswith("\r") for p in split_text("\r\n" * 40, 16))


def test_whitespace_only_text_is_hard_cut():
    parts = split_text(" " * 40, 16)
    assert parts == [" " * 16, " " * 16, " " * 8]


def test_pathological_cluster_is_cut_at_code_points():
    text = "a" + "\u0301" * 40
    parts = check_basic(text, 16)
    assert [len(p) for p in parts] == [16, 16, 9]


@pytest.mark.parametrize(
    "name",
    ["prose", "no-whitespace", "spaces", "zalgo", "zwj-chain", "emoji", "flags", "newlines"],
)
def test_one_megabyte_splits_fast(name):
    rng = random.Random(7)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed"]
    seps = [" "] * 6 + [". ", ", ", "\n", "\n\n"]
    text = {
        "prose": lambda: "".join(rng.choice(words) + rng.choice(seps) for _ in range(180_000)),
        "no-whitespace": lambda: "x" * 1_000_000,
        "spaces": lambda: " " * 1_000_000,
        "zalgo": lambda: "a" + "\u0301" * 999_999,
        "zwj-chain": lambda: "a\u200d" * 500_000,
        "emoji": lambda: (THUMB + " " + FAMILY + " " + FR + " ") * 80_000,
        "flags": lambda: "\U0001f1eb" * 1_000_000,
        "newlines": lambda: "\n" * 1_000_000,
    }[name]()
    assert len(text) >= 900_000
    t0 = time.perf_counter()
    parts = split_text(text)
    elapsed = time.perf_counter() - t0
    assert "".join(parts) == text
    assert max(utf16_len(p) for p in parts) <= 1600
    assert elapsed < 1.0, f"{name}: {elapsed:.2f}s"


# --------------------------------------------------------------------------- properties

LIMITS = st.one_of(st.integers(16, 200), st.just(1600))

# Arbitrary unicode, short and long (hypothesis' text() alone rarely exceeds the limit).
ARBITRARY = st.one_of(
    st.text(max_size=60),
    st.text(min_size=16, max_size=400),
    st.tuples(st.text(min_size=1, max_size=40), st.integers(2, 40)).map(lambda pair: pair[0] * pair[1]),
)
# Dense in everything that may not be cut: joiners, marks, flags, CR LF, spaces, long words.
NASTY = st.lists(
    st.sampled_from(
        [
            "a", "b", "aaaaaaaa", "\u4f60", " ", "  ", "\t", "\n", "\r", "\r\n", "\u2029", "\u00a0", ".", "!",
            "\u3002", '"', ZWJ, ZWJ, "\u0301", "\u0308", "\ufe0f", "\U0001f3fd", "\U0001f1eb", "\U0001f1f7",
            "\U0001f1eb\U0001f1f7", "\U0001f600", "\U0001f468", "\U000e0067",
            "\u0301" * 8, (ZWJ + "\U0001f468") * 3,  # adjacent ones make clusters longer than 16
        ]
    ),
    min_size=10,
    max_size=200,
).map("".join)


@PROPS
@given(text=ARBITRARY, limit=LIMITS)
def test_arbitrary_unicode_invariants(text, limit):
    check_basic(text, limit)


@PROPS
@given(text=NASTY, limit=st.integers(16, 40))
def test_nasty_alphabet_invariants(text, limit):
    check_basic(text, limit)


@PROPS
@given(text=st.one_of(NASTY, ARBITRARY), limit=st.integers(16, 60))
def test_no_part_starts_inside_a_cluster_nor_is_needlessly_blank(text, limit):
    parts = check_basic(text, limit)
    for prev, part in itertools.pairwise(parts):
        if attaches(part[0]) or prev.endswith(ZWJ) or (prev.endswith("\r") and part.startswith("\n")):
            assert is_pathological_fragment(prev, limit), (prev, part)
    # A whitespace-only part is only acceptable when some whitespace run cannot share a
    # part with its neighbouring cluster; 2 * run + cluster <= limit rules that out.
    if not text.isspace():
        widest_run = max((len(m.group()) for m in re.finditer(r"\s+", text)), default=0)
        widest_cluster = max(utf16_len(c) for c in clusters(text))
        if 2 * widest_run + widest_cluster <= limit:
            assert not any(part.isspace() for part in parts), parts


VOCAB = [
    "a", "I", "hello", "world", "Sophon", "reply", "caf\u00e9", "cafe\u0301", "n\u0303\u0301o",
    "a\u0301\u0302\u0303", "\u0436\u0438\u0437\u043d\u044c", "\u4f60\u597d", THUMB, FAMILY, FR, FR + DE,
    "\u2764\ufe0f", "\U0001f600", "word" + THUMB + "word", "x" * 30, "supercalifragilisticexpialidocious",
]
SEPARATORS = (
    [" "] * 12
    + ["  ", "\t"]
    + [". ", "! ", "? ", "\u2026 ", "\u3002 ", "\uff01 ", '." ', "?) ", "\u3002\u300d "]
    + ["\n", "\r\n", " \n", ".\n"]
    + ["\n\n", "\n \n", "\r\n\r\n", ".\n\n"]
)


@st.composite
def structured_text(draw) -> tuple[str, int]:
    """Paragraph/line/sentence/word-shaped text with emoji and combining marks, and a limit."""
    words = draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=60))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(words) - 1, max_size=len(words) - 1))
    text = words[0] + "".join(sep + word for sep, word in zip(seps, words[1:]))
    limit = draw(LIMITS)
    if limit == 1600:  # long replies for the real SMS limit
        text = "\n\n".join([text] * (1 + 2400 // (len(text) + 2)))
    text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", "", " ", "\n", " \n "]))
    return text, limit


def _expected_split(text: str, start: int, limit: int) -> tuple[int, int]:
    """(level, split point) the greedy contract demands for the part at start (structured text)."""
    facts = ref(text)
    hi = min(facts.window_end(start, limit), facts.content_end - 1)  # trailing blanks stay with words
    runs = [(a, b, level) for a, b, level in facts.runs if start < a <= hi]
    if runs:
        best = min(level for _, _, level in runs)
        a, b, _ = max(run for run in runs if run[2] == best)
        return best, facts.last_break(a, min(b, hi))
    first_content = len(text) - len(text[start:].lstrip())
    return 4, facts.last_break(first_content + 1, hi)


@PROPS
@given(case=structured_text())
def test_structured_split_points_are_greedy_by_level(case):
    text, limit = case
    parts = check_basic(text, limit)
    if utf16_len(text) > limit:  # whitespace runs <= 4, clusters <= 8 units: never a blank part
        assert not any(part.isspace() for part in parts), parts
    for (start, end), part in zip(bounds(parts), parts[:-1]):
        level, expected = _expected_split(text, start, limit)
        assert end == expected, (level, part, text[start:expected])


@PROPS
@given(case=structured_text())
def test_structured_uses_paragraph_boundary_in_window(case):
    text, limit = case
    parts = split_text(text, limit)
    facts = ref(text)
    for (start, end), part in zip(bounds(parts), parts[:-1]):
        window = min(facts.window_end(start, limit), facts.content_end - 1)
        fitting = [(a, b) for a, b, level in facts.runs if level == 0 and start < a <= window]
        if fitting:
            a, b = max(fitting)
            assert a <= end <= b, (part, text[a:b])


def test_decomposed_hangul_syllables_stay_whole():
    import unicodedata

    text = unicodedata.normalize("NFD", "한국어문장입니다") * 30  # no spaces: hard cuts
    parts = split_text(text, 16)
    assert "".join(parts) == text
    for part in parts:  # every part starts with a leading consonant (L jamo)
        assert 0x1100 <= ord(part[0]) <= 0x115F, repr(part[:3])
