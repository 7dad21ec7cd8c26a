"""SMS segment counting (GSM-7 160/153, UCS-2 70/67, extended GSM characters count twice)."""
from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st

from sophon_core.textsplit import utf16_len
from sophon_sms_twilio.segments import GSM7_BASIC, GSM7_EXTENDED, count_segments, encoding

GSM_BASIC = st.sampled_from(sorted(GSM7_BASIC))
GSM_ANY = st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENDED))


def test_boundaries():
    assert [count_segments("a" * n) for n in (0, 1, 160, 161, 306, 307)] == [0, 1, 1, 2, 2, 3]
    assert [count_segments("ж" * n) for n in (70, 71, 134, 135)] == [1, 2, 2, 3]
    assert [count_segments("€" * n) for n in (80, 81)] == [1, 2]  # two septets each
    assert count_segments("😀" * 35) == 1 and count_segments("😀" * 36) == 2  # surrogate pairs
    assert encoding("Hello {world}") == "GSM-7" and encoding("Hello ☺") == "UCS-2"


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(GSM_BASIC, max_size=1200))
def test_plain_gsm_text(text):
    n = len(text)
    expected = 0 if n == 0 else 1 if n <= 160 else math.ceil(n / 153)
    assert count_segments(text) == expected


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(GSM_ANY, max_size=1200))
def test_gsm_text_with_extended_characters(text):
    septets = sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
    got = count_segments(text)
    if septets == 0:
        assert got == 0
    elif septets <= 160:
        assert got == 1
    else:  # an escape pair never straddles two segments: at most one septet wasted per segment
        assert math.ceil(septets / 153) <= got <= math.ceil(septets / 152)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(min_size=1, max_size=800).filter(lambda t: encoding(t) == "UCS-2"))
def test_ucs2_text(text):
    units = utf16_len(text)
    got = count_segments(text)
    if units <= 70:
        assert got == 1
    else:  # a surrogate pair never straddles two segments
        assert math.ceil(units / 67) <= got <= math.ceil(units / 66)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=400), st.characters())
def test_appending_never_lowers_the_count(text, ch):
    if encoding(text + ch) == encoding(text):
        assert count_segments(text + ch) >= count_segments(text)
