"""Inbound WhatsApp webhooks through the app (Falcon TestClient): signature, routing,
fields, files as references, bad input answered in words and changing nothing."""
from __future__ import annotations

import time

import falcon.testing
import pytest

from sophon_core.app import create_app
from sophon_core.hookspecs import hookimpl
from sophon_sms_twilio.webhook import EMPTY_TWIML

from wa_helpers import PEER, PUBLIC, SENDER, STATUS, WA_PEER, WA_SENDER, post_signed, wa_channel, wa_form


class Recorder:
    """An agent that records what it was handed and answers "ok"."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def sophon_agents(self):
        outer = self

        class Agent:
            id = "recorder"

            def reply(self, message, history):
                outer.seen.append(message)
                return "ok"

        return [Agent()]


def app_for(wa_runtime, channels, extra=()):
    rt = wa_runtime(channels, extra=extra)
    return rt, falcon.testing.TestClient(create_app(rt))


def stored(rt):
    return rt.store._conn().execute("SELECT direction, peer, text FROM messages ORDER BY id").fetchall()


def test_a_signed_message_is_acked_and_reaches_the_agent_with_whatsapp_metadata(wa_runtime, account, sandbox):
    agent = Recorder()
    rt, client = app_for(wa_runtime, [wa_channel(account, routing={"agentId": "recorder"})], extra=[agent])
    r = post_signed(client, account.auth_token, wa_form(account.sid, "hi there"))
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, EMPTY_TWIML, "text/xml")
    (sent,) = sandbox.wait_for_messages(1, to=WA_PEER)
    assert (sent["form"]["From"], sent["form"]["To"], sent["form"]["Body"]) == (WA_SENDER, WA_PEER, "ok")
    assert sent["form"]["StatusCallback"] == PUBLIC + STATUS
    (msg,) = agent.seen
    assert (msg.sender, msg.recipient, msg.text) == (WA_PEER, WA_SENDER, "hi there")
    assert dict(msg.metadata) == {"profileName": "Ada Lovelace", "waId": PEER[1:]}


def test_a_file_is_a_reference_until_the_pipeline_fetches_it(wa_runtime, account, sandbox):
    agent = Recorder()
    rt, client = app_for(wa_runtime, [wa_channel(account, routing={"agentId": "recorder"})], extra=[agent])
    url = sandbox.add_media(account.sid, "MM" + "1" * 32, b"\xff\xd8jpeg-bytes", "image/jpeg")
    form = wa_form(account.sid, "", sid="MM" + "1" * 32, media=[(url, "image/jpeg")])
    assert post_signed(client, account.auth_token, form).status_code == 200
    sandbox.wait_for_messages(1, to=WA_PEER)
    (msg,) = agent.seen
    (att,) = msg.attachments
    assert (att.content_type, att.url, att.size) == ("image/jpeg", url, len(b"\xff\xd8jpeg-bytes"))
    with open(att.path, "rb") as fh:
        assert fh.read() == b"\xff\xd8jpeg-bytes"
    assert msg.intent == "message"
    inbound = [r for r in rt.store.recent() if r["direction"] == "in"]
    assert [r["files"] for r in inbound] == [[{"content_type": "image/jpeg"}]]


def test_file_count_and_types_are_limited_before_anything_is_fetched(wa_runtime, account, sandbox):
    agent = Recorder()
    rt, client = app_for(wa_runtime, [wa_channel(account, routing={"agentId": "recorder"})], extra=[agent])
    media = [(f"{sandbox.url}/2010-04-01/Accounts/{account.sid}/Messages/MMx/Media/ME{i}", "image/png")
             for i in range(12)]
    media[3] = (media[3][0], "text/html")
    form = wa_form(account.sid, "lots", media=media)
    assert post_signed(client, account.auth_token, form).status_code == 200
    sandbox.wait_for_messages(1, to=WA_PEER)
    (msg,) = agent.seen
    reasons = [d.reason for d in msg.dropped_attachments]
    assert any("text/html are not accepted" in r for r in reasons)
    assert "more than 10 files in one message" in reasons
    # the ten accepted ones were tried (and failed: the sandbox has no such media), none fetched twice
    media_gets = [r for r in sandbox.requests() if "/Media/" in r["path"]]
    assert len(media_gets) == 10
    assert len(msg.attachments) == 0 and len(msg.dropped_attachments) == 12


@pytest.mark.parametrize("word,intent", [("STOP", "opt_out"), ("start", "opt_in"), ("HELP", "message")])
def test_consent_keywords_on_whatsapp(wa_runtime, account, sandbox, word, intent):
    rt, client = app_for(wa_runtime, [wa_channel(account)])
    assert post_signed(client, account.auth_token, wa_form(account.sid, word)).status_code == 200
    if intent == "message":  # Twilio does not answer HELP on WhatsApp: the agent does
        assert sandbox.wait_for_messages(1, to=WA_PEER)
    else:
        assert rt.store.opted_out("wa", WA_PEER) is (intent == "opt_out")


def bad_cases(account):
    return {
        "forged signature": (wa_form(account.sid), {"signature": "bm9wZQ=="}, 403, "X-Twilio-Signature"),
        "no signature": (wa_form(account.sid), {"signature": ""}, 403, "X-Twilio-Signature"),
        "unknown sender": (wa_form(account.sid, to="whatsapp:+15550000000"), {}, 404, "no active WhatsApp channel"),
        "sms-shaped": (wa_form(account.sid, sender=PEER, to=SENDER), {}, 400, "whatsapp:"),
        "no MessageSid": (wa_form(account.sid, MessageSid=None, SmsSid=None, SmsMessageSid=None), {}, 400, "MessageSid"),
        "wrong account": (wa_form(account.sid, AccountSid="AC" + "0" * 32), {}, 404, "no active WhatsApp channel"),
    }


@pytest.mark.parametrize("case", ["forged signature", "no signature", "unknown sender", "sms-shaped",
                                  "no MessageSid", "wrong account"])
def test_bad_webhooks_are_refused_in_words_and_change_nothing(wa_runtime, account, sandbox, case):
    rt, client = app_for(wa_runtime, [wa_channel(account)])
    form, kwargs, status, words = bad_cases(account)[case]
    r = post_signed(client, account.auth_token, form, **kwargs)
    assert r.status_code == status
    assert words in r.text or words in str(r.json if r.content_type == "application/json" else r.text)
    assert account.auth_token not in r.text
    assert stored(rt) == []
    assert sandbox.messages() == []


def test_wrong_content_type_and_disabled_channel(wa_runtime, account, sandbox):
    rt, client = app_for(wa_runtime, [wa_channel(account, enabled=False)])
    r = client.simulate_post("/api/channels/whatsapp/webhook", json={"From": WA_PEER})
    assert r.status_code == 415 and "application/x-www-form-urlencoded" in r.text
    r = post_signed(client, account.auth_token, wa_form(account.sid))
    assert r.status_code == 404 and "no active WhatsApp channel" in r.text
    assert stored(rt) == []


def test_delivery_reports_are_signed_and_63016_is_recorded_in_words(wa_runtime, account, sandbox, caplog):
    rt, client = app_for(wa_runtime, [wa_channel(account)])
    post_signed(client, account.auth_token, wa_form(account.sid, "hi"))
    (sent,) = sandbox.wait_for_messages(1, to=WA_PEER)
    sid = sent["sid"] if "sid" in sent else sent["response"]["sid"]
    report = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": "failed", "SmsStatus": "failed",
              "AccountSid": account.sid, "From": WA_SENDER, "To": WA_PEER, "ApiVersion": "2010-04-01",
              "ErrorCode": "63016", "ChannelPrefix": "whatsapp"}
    forged = post_signed(client, account.auth_token, report, url=PUBLIC + STATUS, path=STATUS, signature="bm9wZQ==")
    assert forged.status_code == 403
    r = post_signed(client, account.auth_token, report, url=PUBLIC + STATUS, path=STATUS)
    assert r.status_code == 200
    # The report may come before the part's Sid is recorded: it is kept and applied then.
    deadline = time.monotonic() + 10
    while True:
        (row,) = rt.store._conn().execute("SELECT status, error FROM messages WHERE direction = 'out'").fetchall()
        if row[0] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert row[0] == "failed"
    assert "24-hour customer service window" in row[1] and "template" in row[1] and "63016" in row[1]
    assert any(rec.levelname == "ERROR" and "63016" in rec.getMessage() for rec in caplog.records)
