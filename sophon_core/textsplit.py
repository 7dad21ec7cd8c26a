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
from bisect import bisect_right
from functools import lru_cache

__all__ = ["MIN_LIMIT", "split_text", "utf16_len"]

#: Smallest accepted ``limit``; below this, "keep clusters whole" stops being meaningful.
MIN_LIMIT = 16

_ZWJ = "\u200d"
# Line breaks as str.splitlines() knows them; "\r\n" is one break, never two.
_LB = r"(?:\r\n|\r(?!\n)|[\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029])"
_TERMINATORS = ".!?\u2026\u3002\uff01\uff1f"  # . ! ? … 。 ！ ？
_CLOSERS = "\"')]}\u2019\u201d\u00bb\u300d\u300f\uff09"  # " ' ) ] } ’ ” » 」 』 ）
_CJK_TERMINATORS = "\u3002\uff01\uff1f"  # inside a hard cut, prefer cutting right after these
_T = "[" + re.escape(_TERMINATORS) + "]"
_C = "[" + re.escape(_CLOSERS) + "]"
_T_OR_C = "[" + re.escape(_TERMINATORS + _CLOSERS) + "]"
_AFTER_TERMINATOR = rf"(?:(?<={_T})|(?<={_T}{_C})|(?<={_T}{_C}{_C}))"

# Boundary levels, best first.  ``\s`` is exactly ``str.isspace``.  Each pattern is
# matched from the window start with the window end as endpos; the greedy ``.*``
# makes it find the *latest* qualifying whitespace run, whose start is group 1.
_PARA, _LINE, _SENTENCE, _WORD = range(4)
_LEVEL_RES = (
    re.compile(rf"(?s:.*)\S(?=\s)(\s*?(?:{_LB}\s*?{_LB}|\u2029))"),  # blank line
    re.compile(rf"(?s:.*)\S(?=\s)(\s*?{_LB})"),  # line break
    re.compile(rf"(?s:.+)(?=\s)(?<={_T_OR_C}){_AFTER_TERMINATOR}(\s)"),  # sentence end
    re.compile(r"(?s:.*)\S(\s)"),  # any whitespace
)
_SENT_END_RE = re.compile(_AFTER_TERMINATOR)
_LB_CHARS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_LB_RE = re.compile(_LB)
_SPACES_RE = re.compile(r"\s*")
_NONSPACE_RE = re.compile(r"\S")
_LAST_NONSPACE_RE = re.compile(r"(?s:.*)\S")
_RI_RUN_RE = re.compile("[\U0001f1e6-\U0001f1ff]{2,}")


def utf16_len(text: str) -> int:
    """Return the length of ``text`` in UTF-16 code units.

    A code point outside the Basic Multilingual Plane (e.g. most emoji) counts 2,
    everything else counts 1 (a lone surrogate in the str counts 1).  This is the
    length Twilio and similar APIs enforce.
    """
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@lru_cache(maxsize=4096)
def _is_extend(ch: str) -> bool:
    """True if ``ch`` attaches to the preceding character (no break before it)."""
    o = ord(ch)
    if (
        0xFE00 <= o <= 0xFE0F  # variation selectors
        or 0xE0100 <= o <= 0xE01EF  # variation selectors supplement
        or 0x1F3FB <= o <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= o <= 0xE007F  # tag characters (subdivision flags)
        or 0x1160 <= o <= 0x11FF  # Hangul medial vowel and final consonant jamo
        or 0xD7B0 <= o <= 0xD7FF  # Hangul jamo extended-B (V and T)
    ):
        return True
    return unicodedata.combining(ch) != 0 or unicodedata.category(ch) in ("Mn", "Me", "Mc")


_CLUSTER_SCAN_RE: re.Pattern[str] | None = None


def _cluster_scan_re() -> re.Pattern[str]:
    """Regex whose match end is the latest position that is a break except, maybe, for
    regional-indicator pairing.  Built on first use (a one-off ~50 ms table scan)."""
    global _CLUSTER_SCAN_RE
    if _CLUSTER_SCAN_RE is None:
        ranges: list[list[int]] = []
        # Marks live below U+20000 and in U+E0000-U+E0FFF (tags, variation selectors).
        for cp in (*range(0x20000), *range(0xE0000, 0xE1000)):
            if cp == 0x200D or _is_extend.__wrapped__(chr(cp)):
                if ranges and ranges[-1][1] == cp - 1:
                    ranges[-1][1] = cp
                else:
                    ranges.append([cp, cp])
        joiners = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
        _CLUSTER_SCAN_RE = re.compile(
            rf"(?s:.*)(?<!\u200d)(?=[^{joiners}])(?!(?<=\r)\n)(?!(?<=[\ud800-\udbff])[\udc00-\udfff])"
        )
    return _CLUSTER_SCAN_RE


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
    """One split run over one text.

    Every search is a C-level regex/str scan bounded by the current window (or
    memoised per whitespace run), so the total work is linear in len(text).
    """

    def __init__(self, text: str, limit: int) -> None:
        self.text = text
        self.n = n = len(text)
        self.limit = limit
        self.total = utf16_len(text)
        self.has_astral = self.total != n
        self._ri_starts: list[int] | None = None
        self._runs: dict[int, tuple[int, int]] = {}  # run start -> (run end, level)
        self._nonspace_cache = (-1, -1)  # (from, first non-space index >= from)
        # ``last`` = end of the last non-whitespace character (0 if none).
        self.last = len(text.rstrip())
        # Keep trailing whitespace with the final words if the last cluster and it fit together.
        self.keep_tail = False
        if 0 < self.last < n:
            q = self.last - 1
            while q > 0 and not self._is_break(q):
                q -= 1
            self.keep_tail = q > 0 and utf16_len(text[q:]) <= limit

    # -- measurements -------------------------------------------------------
    def _end_max(self, start: int) -> int:
        """Largest e with utf16_len(text[start:e]) <= limit."""
        text, n, limit = self.text, self.n, self.limit
        e = min(n, start + limit)
        if not self.has_astral:
            return e
        u = utf16_len(text[start:e])
        while u > limit:
            d = (u - limit + 1) // 2  # each code point is 1 or 2 units
            u -= utf16_len(text[e - d : e])
            e -= d
        while e < n:  # the halving step may undershoot by one code point
            w = 2 if ord(text[e]) > 0xFFFF else 1
            if u + w > limit:
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
            if self._ri_starts is None:
                self._ri_starts = [m.start() for m in _RI_RUN_RE.finditer(text)]
            run_start = self._ri_starts[bisect_right(self._ri_starts, i - 1) - 1]
            return (i - run_start) % 2 == 0
        return True

    def _first_nonspace(self, start: int) -> int:
        """Index of the first non-whitespace character at or after start (n if none)."""
        frm, found = self._nonspace_cache
        if frm <= start <= found:
            return found
        m = _NONSPACE_RE.search(self.text, start)
        found = m.start() if m else self.n
        self._nonspace_cache = (start, found)
        return found

    def _run_at(self, a: int) -> tuple[int, int]:
        """(end, level) of the whitespace run starting at a (memoised)."""
        got = self._runs.get(a)
        if got is None:
            b = _SPACES_RE.match(self.text, a).end()
            run = self.text[a:b]
            breaks = len(_LB_RE.findall(run))
            if breaks >= 2 or "\u2029" in run:
                level = _PARA
            elif breaks:
                level = _LINE
            elif _SENT_END_RE.match(self.text, a):
                level = _SENTENCE
            else:
                level = _WORD
            got = self._runs[a] = (b, level)
        return got

    # -- choosing a split point ------------------------------------------------
    def split(self) -> list[str]:
        parts: list[str] = []
        text = self.text
        start, remaining = 0, self.total
        while remaining > self.limit:
            p = self._choose(start)
            part = text[start:p]
            parts.append(part)
            remaining -= utf16_len(part)
            start = p
        parts.append(text[start:])
        return parts

    def _choose(self, start: int) -> int:
        """Return the split point p (start < p <= end_max) for the part starting at start."""
        text = self.text
        e = self._end_max(start)
        # Preferred: the part holds non-whitespace (p > lo) and so does the rest (p <= hi).
        lo = self._first_nonspace(start)
        hi = min(e, self.last - 1) if self.keep_tail else e
        if lo < hi:
            # The run straddling hi (if text[hi] is whitespace) extends past the
            # window, so classify it whole; the runs before it lie inside the window.
            cut = _LAST_NONSPACE_RE.match(text, start, hi).end()  # > lo >= start
            straddle = self._run_at(cut)[1] if text[hi].isspace() else None
            if straddle is None:
                cut = hi
                inner = text[lo : hi + 1]  # text[hi] is not whitespace
            else:
                inner = text[lo:cut]  # text[cut-1] is not whitespace
            # ``inner`` starts and ends with non-whitespace and holds every run to search.
            levels = []
            if len(inner.split(None, 1)) > 1:  # cheap pre-checks before the regex scans
                if any(c in inner for c in _LB_CHARS):
                    levels += [_PARA, _LINE]
                head = text[max(0, lo - 2) : lo]  # a terminator may precede closing quotes
                if any(c in inner or c in head for c in _TERMINATORS):
                    levels.append(_SENTENCE)
                levels.append(_WORD)
            for level in range(_WORD + 1):
                if straddle is not None and straddle <= level:
                    p = self._break_back(hi, cut)
                    if p is not None:
                        return p
                    straddle = None
                if level not in levels:
                    continue
                rx = _LEVEL_RES[level]
                end = cut
                while True:
                    m = rx.match(text, start, end)
                    if m is None:
                        break
                    a = m.start(1)  # > start, and text[a-1] is not whitespace
                    b = _SPACES_RE.match(text, a, end).end()
                    p = self._break_back(b, a)
                    if p is not None:
                        return p
                    end = a
            p = self._cjk_cut(lo, hi)
            if p is not None:
                return p
            p = self._break_back(hi, lo + 1)
            if p is not None:
                return p
            # (lo, hi] holds no break at all: look only outside it.
            p = self._break_back(e, hi + 1)
            if p is None:
                p = self._break_back(lo, start + 1)
        else:
            p = self._break_back(e, start + 1)
        # Pathological: whitespace-only window, or one cluster longer than limit.
        return e if p is None else p

    def _break_back(self, p: int, floor: int) -> int | None:
        """Latest break position in [floor, p], or None."""
        for _ in range(16):  # the common case: a break within a few code points
            if p < floor:
                return None
            if self._is_break(p):
                return p
            p -= 1
        # A long cluster (zalgo text, ZWJ chains): let a regex skip over it.
        rx = _cluster_scan_re()
        while p >= floor:
            m = rx.match(self.text, floor, p + 1)
            if m is None:
                return None
            p = m.end()  # candidate; only regional-indicator pairing is left to check
            if self._is_break(p):
                return p
            p -= 1
        return None

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
                if self._is_break(p):
                    best = p
                    break
                j = text.rfind(ch, lo, j)
        return best if best > lo else None
