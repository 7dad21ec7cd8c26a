"""The webhook's form parser is ``urllib.parse.parse_qs`` (keep_blank_values, max_num_fields), only faster."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sophon_sms_twilio.webhook import Form, parse_fields

PIECES = st.sampled_from(["&", "=", "+", "%", "%2", "%zz", "%41", "%e2%82%ac", "%E2%82", " ", "a", "Body", ";", "é"])
RAW = st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(RAW)
def test_any_text_parses_as_parse_qs_does(text):
    try:
        expected = parse_qs(text, keep_blank_values=True, max_num_fields=50)
    except ValueError:
        with pytest.raises(ValueError):
            parse_fields(text, max_fields=50)
        return
    got = parse_fields(text, max_fields=50)
    assert isinstance(got, Form) and got == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=25))
def test_encoded_forms_round_trip(pairs):
    text = urlencode(pairs)
    assert parse_fields(text) == parse_qs(text, keep_blank_values=True)


def test_field_limit_and_examples():
    assert parse_fields("") == {}
    assert parse_fields("a=1&a=2&b=&c&=x&&d=%20+%2B") == {"a": ["1", "2"], "b": [""], "c": [""], "": ["x"],
                                                       "d": ["  +"]}
    assert len(parse_fields("&".join(["x=1"] * 200))["x"]) == 200
    with pytest.raises(ValueError):
        parse_fields("&".join(["x=1"] * 201))
