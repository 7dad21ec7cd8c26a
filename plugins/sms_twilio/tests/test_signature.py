"""Twilio's webhook signature without the SDK's per-request overhead: ``compute_signature``
and ``signature_matches`` must agree with ``twilio.request_validator.RequestValidator``
on every form and URL (property tests), and on the SDK's own test vectors."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator, add_port, remove_port

from sophon_sms_twilio import webhook
from sophon_sms_twilio.webhook import Form, compute_signature, signature_matches

TOKEN = "12345678901234567890123456789012"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Text as it can reach a form: any code point but lone surrogates (hypothesis' default),
# with the characters form encoding treats specially drawn often.
special = st.sampled_from(["&", "=", "+", "%", " ", "%20", "?", "#", ";", "/", ":", "é", "😀", "\u00a0", "\u200b"])
text = st.lists(st.one_of(special, st.text(max_size=4)), max_size=6).map("".join)
names = st.one_of(st.sampled_from(["Body", "From", "To", "MessageSid", "AccountSid", "MediaUrl0", "B",
                                   "body", "Bodyx", ""]), text)


@st.composite
def forms(draw) -> Form:
    """Name -> values, like ``parse_form``: repeated names with several values, duplicate
    identical values, empty values."""
    form = Form()
    for name in draw(st.lists(names, max_size=8)):
        values = draw(st.lists(st.one_of(st.just(""), text), min_size=1, max_size=4))
        if draw(st.booleans()):
            values += draw(st.lists(st.sampled_from(values), max_size=3))  # duplicates
        form[name] = draw(st.permutations(values))
    return form


@st.composite
def urls(draw) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTPS"]))
    userinfo = draw(st.sampled_from(["", "", "", "user@", "user:pw@"]))
    host = draw(st.sampled_from(["bot.example.com", "Bot.Example.COM", "127.0.0.1", "localhost",
                                 "abcd.ngrok.io", "[::1]", "xn--bcher-kva.example"]))
    port = draw(st.one_of(st.none(), st.sampled_from([80, 443, 8080, 0, 1, 65535]),
                          st.integers(1, 65535)))
    path = draw(st.sampled_from(["", "/", "/api/channels/sms/webhook", "/api/channels/whatsapp/webhook/",
                                 "/a;b/c", "/caf%C3%A9", "/café"]))
    query = draw(st.one_of(st.just(""), st.just("?"), st.sampled_from(["?x=1", "?foo=1&bar=2", "?a=%26&b=+"]),
                           text.map(lambda q: "?" + q)))
    fragment = draw(st.sampled_from(["", "", "#", "#frag"]))
    return f"{scheme}://{userinfo}{host}{'' if port is None else f':{port}'}{path}{query}{fragment}"


def other_port_forms(url: str) -> list[str]:
    parsed = urlparse(url)
    return [add_port(parsed), remove_port(parsed)]


def mutated(signature: str, position: int, replacement: str) -> str:
    position %= len(signature.rstrip("="))
    assume(signature[position] != replacement)
    return signature[:position] + replacement + signature[position + 1:]


def outcome(check, *args):
    try:
        return check(*args)
    except ValueError as exc:  # a URL port that is not a number in 0-65535
        return type(exc)


@settings(max_examples=150, deadline=None)
@given(token=st.one_of(st.just(TOKEN), st.text(min_size=1, max_size=40)), url=st.one_of(urls(), text),
       form=forms())
@example(token=TOKEN, url="https://bot.example.com/", form=Form())
@example(token=TOKEN, url="https://h/", form=Form({"a": ["2", "1", "2", ""], "a&b=": ["x y+%"], "": [""]}))
def test_compute_signature_is_the_sdks(token, url, form):
    expected = RequestValidator(token).compute_signature(url, form)
    assert compute_signature(token, url, form) == expected
    assert isinstance(compute_signature(token, url, form), str)


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(names, st.one_of(st.just(""), text)), max_size=10), url=urls())
def test_compute_signature_is_the_sdks_on_parsed_bodies(pairs, url):
    # What parse_form builds from a body Twilio urlencodes.
    form = Form(parse_qs(urlencode(pairs), keep_blank_values=True))
    assert compute_signature(TOKEN, url, form) == RequestValidator(TOKEN).compute_signature(url, form)


@settings(max_examples=150, deadline=None)
@given(url=urls(), form=forms(), signed_at=st.sampled_from(["as requested", "with port", "without port"]),
       position=st.integers(0, 26), replacement=st.sampled_from(B64))
def test_signature_matches_agrees_with_validate(url, form, signed_at, position, replacement):
    validator = RequestValidator(TOKEN)
    with_port, without_port = other_port_forms(url)
    signed = {"as requested": url, "with port": with_port, "without port": without_port}[signed_at]
    signature = validator.compute_signature(signed, form)

    accepted = signature_matches(TOKEN, url, form, signature)
    assert accepted is validator.validate(url, form, signature)
    if signed_at != "as requested":
        assert accepted is True  # either port form is Twilio's
    wrong = mutated(signature, position, replacement)
    assert signature_matches(TOKEN, url, form, wrong) is False
    assert validator.validate(url, form, wrong) is False
    assert signature_matches("another-token-0000000000000000000", url, form, signature) is False
    assert signature_matches(TOKEN, url, form, "") is False


@settings(max_examples=100, deadline=None)
@given(url=st.one_of(urls(), text), other_url=urls(), form=forms(), other_form=forms(),
       junk=st.one_of(st.text(max_size=40), st.text(alphabet=B64, min_size=27, max_size=28)))
def test_signature_matches_agrees_with_validate_on_wrong_signatures(url, other_url, form, other_form, junk):
    validator = RequestValidator(TOKEN)
    for signature in (junk, junk + "=", validator.compute_signature(other_url, form),
                      validator.compute_signature(url, other_form)):
        assert outcome(signature_matches, TOKEN, url, form, signature) == outcome(validator.validate, url, form,
                                                                                  signature)


def test_the_url_as_requested_costs_one_hmac_and_the_other_port_form_a_second(monkeypatch):
    calls = []
    sign = webhook._sign
    monkeypatch.setattr(webhook, "_sign", lambda key, data: calls.append(data) or sign(key, data))
    form = Form({"Body": ["hi"], "From": ["+15551230001"]})
    url = "https://bot.example.com/api/channels/sms/webhook"
    validator = RequestValidator(TOKEN)

    assert signature_matches(TOKEN, url, form, validator.compute_signature(url, form))
    assert [c.split("/api")[0] for c in calls] == ["https://bot.example.com"]
    calls.clear()
    assert signature_matches(TOKEN, url, form, validator.compute_signature(url.replace(".com", ".com:443"), form))
    assert [c.split("/api")[0] for c in calls] == ["https://bot.example.com", "https://bot.example.com:443"]
    calls.clear()
    assert not signature_matches(TOKEN, url, form, "bm9wZQ==")
    assert len(calls) == 2


# twilio-python's own tests (tests/unit/test_request_validator.py).
SDK_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
SDK_FORM = Form({"CallSid": ["CA1234567890ABCDE"], "Digits": ["1234"], "From": ["+14158675309"],
                 "To": ["+18005551212"], "Caller": ["+14158675309"]})


def test_the_sdks_vectors():
    assert compute_signature("12345", SDK_URL, SDK_FORM) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    duplicates = Form({"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234"]})
    assert compute_signature("12345", SDK_URL, duplicates) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


@pytest.mark.parametrize("url, signature", [
    (SDK_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    (SDK_URL.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),  # port removed
    (SDK_URL.replace(".com", ".com:1234").replace("https", "http"), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    (SDK_URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),  # :443 added
    (SDK_URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # :80 added
])
def test_the_sdks_port_vectors(url, signature):
    assert signature_matches("12345", url, SDK_FORM, signature)
    assert not signature_matches("12346", url, SDK_FORM, signature)
    assert not signature_matches("12345", url, Form({**SDK_FORM, "Digits": ["1235"]}), signature)
    assert not signature_matches("12345", url, SDK_FORM, signature[:5] + ("A" if signature[5] != "A" else "B")
                                 + signature[6:])


@pytest.mark.parametrize("url, form", [("https://h/\ud800", Form()), ("https://h/", Form({"a": ["\udc80"]})),
                                       ("https://h/", Form({"\ud800": ["x"]}))])
def test_text_utf8_cannot_encode_is_an_error_as_in_the_sdk(url, form):
    with pytest.raises(UnicodeEncodeError):
        RequestValidator(TOKEN).compute_signature(url, form)
    with pytest.raises(UnicodeEncodeError):
        compute_signature(TOKEN, url, form)
    with pytest.raises(UnicodeEncodeError):
        signature_matches(TOKEN, url, form, "bm9wZQ==")
