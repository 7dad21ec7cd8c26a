"""Split long outgoing text into channel-sized parts at natural boundaries.

Lengths are measured in UTF-16 code units, which is what Twilio (and most
channel APIs) count.  Splitting is lossless (``"".join(parts) == text``),
greedy, prefers paragraph > line > sentence > word boundaries, and never cuts
through a user-perceived character (combining marks, ZWJ emoji sequences,
skin tones, variation selectors, flag pairs, ``"\\r\\n"``).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right

__all__ = ["MIN_LIMIT", "split_text", "utf16_len"]

#: Smallest accepted ``limit``; below this, "keep clusters whole" stops being meaningful.
MIN_LIMIT = 16

_ZWJ = "\u200d"
# Line breaks as str.splitlines() knows them; "\r\n" is one break, never two.
_LB = r"(?:\r\n|\r(?!\n)|[\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029])"
# Maximal whitespace runs (\s is exactly str.isspace) ...
_WS_RUN_RE = re.compile(r"\s+")
# ... holding a blank line (two line breaks) or a PARAGRAPH SEPARATOR,
_PARA_RE = re.compile(rf"(?<!\s)\s*?(?:{_LB}\s*?{_LB}|\u2029)\s*")
# ... holding at least one line break,
_LINE_RE = re.compile(rf"(?<!\s)\s*?{_LB}\s*")
# ... or following a sentence terminator (optionally closed by up to two quotes/brackets).
_TERMINATORS = ".!?\u2026\u3002\uff01\uff1f"  # . ! ? … 。 ！ ？
_CLOSERS = "\"')]}\u2019\u201d\u00bb\u300d\u300f\uff09"  # " ' ) ] } ’ ” » 」 』 ）
_T = "[" + re.escape(_TERMINATORS) + "]"
_C = "[" + re.escape(_CLOSERS) + "]"
_SENT_RE = re.compile(rf"(?:(?<={_T})|(?<={_T}{_C})|(?<={_T}{_C}{_C}))\s+")
# CJK text rarely has spaces: inside a hard cut, prefer cutting right after these.
_CJK_TERMINATORS = "\u3002\uff01\uff1f"
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")
_RI_RUN_RE = re.compile("[\U0001f1e6-\U0001f1ff]{2,}")


def utf16_len(text: str) -> int:
    """Return the length of ``text`` in UTF-16 code units.

    A code point outside the Basic Multilingual Plane (e.g. most emoji) counts 2,
    everything else counts 1 (a lone surrogate in the str counts 1).  This is the
    length Twilio and similar APIs enforce.
    """
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _is_extend(ch: str) -> bool:
    """True if ``ch`` attaches to the preceding character (no break before it)."""
    o = ord(ch)
    if (
        0xFE00 <= o <= 0xFE0F  # variation selectors
        or 0xE0100 <= o <= 0xE01EF  # variation selectors supplement
        or 0x1F3FB <= o <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= o <= 0xE007F  # tag characters (subdivision flags)
    ):
        return True
    return unicodedata.combining(ch) != 0 or unicodedata.category(ch) in ("Mn", "Me", "Mc")


def split_text(text: str, limit: int = 1600) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` UTF-16 code units each.

    Contract:

    * ``"".join(split_text(text, limit)) == text`` for every input (lossless).
      Whitespace at a split point stays at the end of the previous part, or, if
      that part would overflow, starts the next one.
    * ``utf16_len(part) <= limit`` for every part; no part is empty.
      ``""`` gives ``[]``; text that fits gives ``[text]``.
    * ``limit`` must be an int ``>= 16`` (``ValueError`` otherwise).
    * Greedy: each part is as long as possible while ending at the best boundary
      level found in its window, in this order: paragraph (a whitespace run
      holding a blank line, i.e. two line breaks, or U+2029), line break,
      sentence end (``. ! ? …`` or ``。！？``, optionally followed by closing
      quotes/brackets, then whitespace), word (any whitespace), and only then a
      hard cut (inside which a cut right after ``。！？`` is preferred).
    * No split inside a user-perceived character: never before a combining mark
      (``unicodedata.combining`` or category Mn/Me/Mc), a variation selector, a
      skin tone modifier or a tag character; never before or after U+200D ZWJ;
      never between the two regional indicators of a flag (paired from the start
      of their run); never inside ``"\\r\\n"`` or a surrogate pair.  Only a single
      cluster longer than ``limit`` is cut at code points.
    * A part holds non-whitespace unless that is impossible: the whole text is
      whitespace, or a whitespace run is too long to share a part with a
      neighbouring character.  Trailing whitespace stays with the last words
      when they fit together.
    * Pure and linear-ish: a 1 MB input splits in well under a second.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be int, not {type(limit).__name__}")
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be >= {MIN_LIMIT} UTF-16 code units, got {limit}")
    if not text:
        return []
    if utf16_len(text) <= limit:
        return [text]
    return _Splitter(text, limit).split()


class _Splitter:
    """One split run over one text; precomputes boundaries so each part costs O(log n)."""

    def __init__(self, text: str, limit: int) -> None:
        self.text = text
        self.n = n = len(text)
        self.limit = limit
        self.astral = [m.start() for m in _ASTRAL_RE.finditer(text)]
        self.ri_starts = [m.start() for m in _RI_RUN_RE.finditer(text)]
        spans = [m.span() for m in _WS_RUN_RE.finditer(text)]
        self.run_starts = [a for a, _ in spans]
        self.run_ends = [b for _, b in spans]
        # Boundary levels, best first; each is (starts, ends) of whitespace runs.
        self.levels = []
        for rx in (_PARA_RE, _LINE_RE, _SENT_RE):
            lvl = [m.span() for m in rx.finditer(text)]
            self.levels.append(([a for a, _ in lvl], [b for _, b in lvl]))
        self.levels.append((self.run_starts, self.run_ends))
        # ``last`` = end of the last non-whitespace character (0 if none).
        self.last = self.run_starts[-1] if spans and self.run_ends[-1] == n else n
        # Keep trailing whitespace with the final words if the last cluster and it fit together.
        self.keep_tail = False
        if 0 < self.last < n:
            q = self.last - 1
            while q > 0 and not self._is_break(q):
                q -= 1
            self.keep_tail = q > 0 and self._units(q, n) <= limit

    # -- measurements -------------------------------------------------------
    def _units(self, a: int, b: int) -> int:
        """UTF-16 length of text[a:b]."""
        if not self.astral:
            return b - a
        return b - a + bisect_left(self.astral, b) - bisect_left(self.astral, a)

    def _end_max(self, start: int) -> int:
        """Largest e with utf16_len(text[start:e]) <= limit."""
        e = min(self.n, start + self.limit)
        if not self.astral:
            return e
        u = self._units(start, e)
        while u > self.limit:
            e -= (u - self.limit + 1) // 2
            u = self._units(start, e)
        while e < self.n:  # the halving step may undershoot by one code point
            w = 2 if ord(self.text[e]) > 0xFFFF else 1
            if u + w > self.limit:
                break
            u += w
            e += 1
        return e

    def _is_break(self, i: int) -> bool:
        """May the text be cut between text[i-1] and text[i]?  (0 < i < n)"""
        text = self.text
        prev, ch = text[i - 1], text[i]
        if prev == "\r" and ch == "\n":
            return False
        if ch == _ZWJ or prev == _ZWJ:
            return False
        if "\ud800" <= prev <= "\udbff" and "\udc00" <= ch <= "\udfff":
            return False
        if _is_extend(ch):
            return False
        if "\U0001f1e6" <= prev <= "\U0001f1ff" and "\U0001f1e6" <= ch <= "\U0001f1ff":
            run_start = self.ri_starts[bisect_right(self.ri_starts, i - 1) - 1]
            return (i - run_start) % 2 == 0
        return True

    # -- choosing a split point ------------------------------------------------
    def split(self) -> list[str]:
        parts: list[str] = []
        start = 0
        while self._units(start, self.n) > self.limit:
            p = self._choose(start)
            parts.append(self.text[start:p])
            start = p
        parts.append(self.text[start:])
        return parts

    def _first_nonspace(self, start: int) -> int:
        k = bisect_right(self.run_starts, start) - 1
        if k >= 0 and self.run_ends[k] > start:
            return self.run_ends[k]
        return start

    def _choose(self, start: int) -> int:
        """Return the split point p (start < p <= end_max) for the part starting at start."""
        e = self._end_max(start)
        # Preferred: the part contains non-whitespace (p > lo), and so does the rest (p <= hi).
        lo = self._first_nonspace(start)
        hi = min(e, self.last - 1) if self.keep_tail else e
        if lo < hi:
            for starts, ends in self.levels:
                k = bisect_right(starts, hi) - 1
                while k >= 0 and starts[k] > start:
                    a = starts[k]
                    p = min(ends[k], hi)
                    while p >= a and not self._is_break(p):
                        p -= 1
                    if p >= a:
                        return p
                    k -= 1
            p = self._cjk_cut(lo, hi)
            if p is not None:
                return p
            p = hi
            while p > lo and not self._is_break(p):
                p -= 1
            if p > lo:
                return p
        # Pathological (whitespace-only window, or one cluster longer than limit).
        p = e
        while p > start and not self._is_break(p):
            p -= 1
        return p if p > start else e

    def _cjk_cut(self, lo: int, hi: int) -> int | None:
        """Latest break in (lo, hi] right after 。！？ (plus closing brackets), if any."""
        text = self.text
        best = -1
        for ch in _CJK_TERMINATORS:
            j = text.rfind(ch, lo, hi)
            while j >= lo and j + 1 > best:
                p = j + 1
                while p < hi and text[p] in _CLOSERS:
                    p += 1
                if p > best and self._is_break(p):
                    best = p
                    break
                j = text.rfind(ch, lo, j)
        return best if best > lo else None
