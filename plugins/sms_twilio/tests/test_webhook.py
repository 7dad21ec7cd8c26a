"""SMS webhook through the Falcon app; replies go to the sandbox over real HTTP."""
from __future__ import annotations

import logging
import time
from urllib.parse import urlencode

import falcon.testing
import pytest
from twilio.request_validator import RequestValidator

from sophon_core.app import create_app
from sophon_core.hookspecs import hookimpl
from sophon_sms_twilio.webhook import EMPTY_TWIML, TEXT_ONLY_REPLY, Form

from sms_helpers import NUMBER, PEER, PUBLIC, WEBHOOK, inbound_form, post_signed, sms_channel


@pytest.fixture
def app(sms_runtime, account):
    def make(channels=None, extra=(), **more):
        rt = sms_runtime(channels or [sms_channel(account)], extra=extra, **more)
        return rt, falcon.testing.TestClient(create_app(rt))
    return make


def test_twilio_published_signature_vector_validates_through_our_form():
    # Twilio's documented example (docs: "Webhooks security").
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    form = Form({"CallSid": ["CA1234567890ABCDE"], "Caller": ["+14158675310"], "Digits": ["1234"],
                 "From": ["+14158675310"], "To": ["+18005551212"]})
    assert RequestValidator("12345").validate(url, form, "GvWf1cFY/Q7PnoempGyD5oXAezc=")
    assert not RequestValidator("12346").validate(url, form, "GvWf1cFY/Q7PnoempGyD5oXAezc=")
    form["Digits"] = ["1235"]
    assert not RequestValidator("12345").validate(url, form, "GvWf1cFY/Q7PnoempGyD5oXAezc=")


def test_signed_webhook_acks_with_empty_twiml_and_reply_is_sent_by_rest(app, account, sandbox):
    rt, client = app()
    r = post_signed(client, account.auth_token, inbound_form(account.sid, "hello"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/xml")
    assert r.text == EMPTY_TWIML
    (m,) = sandbox.wait_for_messages(1, to=PEER)
    assert m["form"]["To"] == PEER and m["form"]["From"] == NUMBER
    assert m["auth_user"] == account.sid and m["account_sid"] == account.sid
    assert m["form"]["Body"] == 'Sophon default agent. You said: "hello"'


def test_missing_or_wrong_signature_is_403_logs_the_url_and_changes_nothing(app, account, sandbox, caplog):
    rt, client = app()
    form = inbound_form(account.sid)
    caplog.set_level(logging.WARNING)
    r = post_signed(client, account.auth_token, form, signature="")
    assert (r.status_code, r.text) == (403, "invalid or missing X-Twilio-Signature\n")
    assert "missing X-Twilio-Signature header" in caplog.text
    r = post_signed(client, "not-the-token", form)
    assert (r.status_code, r.text) == (403, "invalid or missing X-Twilio-Signature\n")
    # the log names the URL that was checked and the channel, the response does not
    assert f"checked URL {PUBLIC}{WEBHOOK} with the Auth Token of channel sms-twilio" in caplog.text
    # signed for another URL (e.g. a proxy rewrote it): rejected too
    assert post_signed(client, account.auth_token, form, url="https://evil.example.com" + WEBHOOK).status_code == 403
    # tampered body after signing
    sig = RequestValidator(account.auth_token).compute_signature(PUBLIC + WEBHOOK, form)
    assert post_signed(client, account.auth_token, {**form, "Body": "tampered"}, signature=sig).status_code == 403
    time.sleep(0.3)
    assert account.auth_token not in caplog.text
    assert rt.store.recent() == [] and sandbox.messages() == []


def test_without_public_url_the_requests_own_url_is_checked(app, account, sandbox, caplog):
    rt, client = app(SOPHON_PUBLIC_URL="")
    assert [str(w) for w in rt.config.warnings if w.path == "config.publicUrl"] == [
        "sms-twilio: config.publicUrl: neither SOPHON_PUBLIC_URL nor publicUrl is set: webhook signatures "
        "are checked against the URL each request names (its Host header). Set SOPHON_PUBLIC_URL to the "
        "base URL Twilio calls, e.g. https://bot.example.com"]
    form = inbound_form(account.sid)
    assert post_signed(client, account.auth_token, form).status_code == 403  # signed for bot.example.com
    r = post_signed(client, account.auth_token, form, url="http://falconframework.org" + WEBHOOK)
    assert r.status_code == 200
    # The Host header and the scheme the server saw (gunicorn applies X-Forwarded-Proto from trusted
    # proxies only) make the URL; X-Forwarded-Host from the caller is not trusted.
    form2 = inbound_form(account.sid, sid="SM" + "b" * 32)
    sig = RequestValidator(account.auth_token).compute_signature("https://abcd.ngrok.io" + WEBHOOK, form2)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig}
    r = client.simulate_post(WEBHOOK, body=urlencode(form2), protocol="https",
                             headers={**headers, "X-Forwarded-Host": "abcd.ngrok.io"})
    assert r.status_code == 403
    assert "checked URL https://falconframework.org" in caplog.text
    r = client.simulate_post(WEBHOOK, body=urlencode(form2), protocol="https", host="abcd.ngrok.io",
                             headers=headers)
    assert r.status_code == 200


def test_channel_public_url_overrides_the_environment(app, account, sandbox):
    ch = sms_channel(account)
    ch["config"]["publicUrl"] = "https://sms.example.org/prefix"
    rt, client = app([ch])
    form = inbound_form(account.sid)
    assert post_signed(client, account.auth_token, form).status_code == 403
    url = "https://sms.example.org/prefix" + WEBHOOK
    assert post_signed(client, account.auth_token, form, url=url).status_code == 200


def test_unknown_number_and_inactive_channel_are_404(app, account, sandbox, caplog):
    rt, client = app([sms_channel(account), sms_channel(account, "off", "+15005550007", enabled=False)])
    r = post_signed(client, account.auth_token, inbound_form(account.sid, to="+15550000000"))
    assert r.status_code == 404 and "is the channel activated" in r.text
    assert "no SMS channel in channels.json has phoneNumber +15550000000" in caplog.text
    r = post_signed(client, account.auth_token, inbound_form(account.sid, to="+15005550007"))
    assert r.status_code == 404 and "'off'" not in r.text
    assert "the SMS channel 'off' for +15005550007 is not activated" in caplog.text
    # a number of another account: signed with that account's token, still 404
    other = sandbox.add_account()
    r = post_signed(client, account.auth_token, inbound_form(other.sid))
    assert r.status_code == 404 and f"but the webhook is from {other.sid}" in caplog.text
    time.sleep(0.2)
    assert rt.store.recent() == [] and sandbox.messages() == []


@pytest.mark.parametrize("field", ["From", "To", "MessageSid"])
def test_missing_required_field_is_400(app, account, sandbox, field):
    rt, client = app()
    form = inbound_form(account.sid)
    del form[field]
    r = post_signed(client, account.auth_token, form)
    assert r.status_code == 400, r.text
    assert f"missing required field(s): {field}" in r.text
    assert rt.store.recent() == []


def test_oversized_body_is_413_and_wrong_content_type_is_415(app, account, sandbox):
    rt, client = app()
    form = inbound_form(account.sid, "x" * (65 * 1024))
    assert post_signed(client, account.auth_token, form).status_code == 413
    r = client.simulate_post(WEBHOOK, json=inbound_form(account.sid),
                             headers={"X-Twilio-Signature": "x"})
    assert r.status_code == 415 and "application/x-www-form-urlencoded" in r.text
    assert rt.store.recent() == []


def test_duplicate_webhook_is_answered_once(app, account, sandbox):
    rt, client = app()
    form = inbound_form(account.sid, sid="SM" + "d" * 32)
    assert post_signed(client, account.auth_token, form).status_code == 200
    assert post_signed(client, account.auth_token, form).status_code == 200
    sandbox.wait_for_messages(1, to=PEER)
    time.sleep(0.5)
    assert len(sandbox.messages(to=PEER)) == 1


def test_media_only_message_gets_text_only_reply(app, account, sandbox):
    rt, client = app()
    form = inbound_form(account.sid, "", NumMedia="1", MediaUrl0="https://api.twilio.com/x.jpg",
                        MediaContentType0="image/jpeg")
    assert post_signed(client, account.auth_token, form).status_code == 200
    (m,) = sandbox.wait_for_messages(1, to=PEER)
    assert m["form"]["Body"] == TEXT_ONLY_REPLY


class Recorder:
    def __init__(self, reply=None):
        self.got = []
        self.reply_text = reply

    @hookimpl
    def sophon_agents(self):
        outer = self

        class A:
            id = "rec"

            def reply(self, message, history):
                outer.got.append(message)
                return outer.reply_text or "noted"

        return [A()]


def test_text_with_media_reaches_agent_with_a_note(app, account, sandbox):
    rec = Recorder()
    ch = sms_channel(account, routing={"agentId": "rec", "dmBehavior": "per-peer"})
    rt, client = app([ch], extra=[rec])
    form = inbound_form(account.sid, "look", NumMedia="2", MediaContentType0="image/png",
                        MediaContentType1="video/mp4", MediaUrl0="https://api.twilio.com/a", MediaUrl1="https://api.twilio.com/b")
    post_signed(client, account.auth_token, form)
    sandbox.wait_for_messages(1, to=PEER)
    (msg,) = rec.got
    assert msg.text.startswith("look\n\n[The sender also attached 2 file(s) (image/png, video/mp4)")
    assert [d.content_type for d in msg.dropped_attachments] == ["image/png", "video/mp4"]
    assert (msg.sender, msg.recipient, msg.channel_id) == (PEER, NUMBER, "sms-twilio")


def test_long_reply_is_split_and_sent_in_order(app, account, sandbox):
    paragraphs = [f"Paragraph {i}. " + ("word " * 150).strip() for i in range(5)]
    reply = "\n\n".join(paragraphs)
    assert len(reply) > 3200
    rec = Recorder(reply)
    rt, client = app([sms_channel(account, routing={"agentId": "rec"})], extra=[rec])
    post_signed(client, account.auth_token, inbound_form(account.sid))
    msgs = sandbox.wait_for_messages(3, to=PEER)
    time.sleep(0.3)
    msgs = sandbox.messages(to=PEER)
    bodies = [m["form"]["Body"] for m in msgs]
    assert "".join(bodies) == reply
    assert all(len(b) <= 1600 for b in bodies) and len(bodies) >= 3
    # split at paragraph boundaries: every part starts a paragraph
    assert all(b.startswith("Paragraph") for b in bodies)


def test_a_repeated_idempotency_token_is_not_accepted_twice(app, account, sandbox):
    rt, client = app()
    token = {"I-Twilio-Idempotency-Token": "a1b2c3"}
    r1 = post_signed(client, account.auth_token, inbound_form(account.sid, "one", sid="SM" + "1" * 32), headers=token)
    r2 = post_signed(client, account.auth_token, inbound_form(account.sid, "two", sid="SM" + "2" * 32), headers=token)
    assert (r1.status_code, r2.status_code) == (200, 200) and r2.text == EMPTY_TWIML
    sandbox.wait_for_messages(1, to=PEER)
    time.sleep(0.5)
    assert [m["form"]["Body"] for m in sandbox.messages()] == ['Sophon default agent. You said: "one"']


@pytest.mark.parametrize("called", ["https://bot.example.com/api/channels/sms/webhook",
                                    "https://bot.example.com:443/api/channels/sms/webhook",
                                    "http://127.0.0.1:8080/api/channels/sms/webhook?x=1",
                                    "http://127.0.0.1/api/channels/sms/webhook"])
@pytest.mark.parametrize("signed", ["https://bot.example.com/api/channels/sms/webhook",
                                    "https://bot.example.com:443/api/channels/sms/webhook",
                                    "http://127.0.0.1:8080/api/channels/sms/webhook?x=1",
                                    "http://127.0.0.1/api/channels/sms/webhook",
                                    "https://evil.example.com/api/channels/sms/webhook"])
def test_one_hmac_signature_check_agrees_with_the_sdk(called, signed):
    from twilio.request_validator import RequestValidator

    from sophon_sms_twilio.webhook import Form, signature_matches

    token = "12345678901234567890123456789012"
    form = Form({"From": ["+15551230001"], "To": ["+15005550006"], "Body": ["hi"], "MessageSid": ["SM1"]})
    validator = RequestValidator(token)
    signature = validator.compute_signature(signed, form)
    assert signature_matches(token, called, form, signature) is validator.validate(called, form, signature)
    assert signature_matches("another-token-0000000000000000000", called, form, signature) is False
