"""Opt-out, access, pumping guards, pacing and delivery status, against the sandbox.

Each test asserts what reached the sandbox and what the store holds.
"""
from __future__ import annotations

import time

import falcon.testing
import pytest

from sophon_core.app import create_app
from sophon_core.hookspecs import hookimpl

from sms_helpers import NUMBER, PEER, PUBLIC, inbound_form, post_signed, sms_channel

STATUS = "/api/channels/sms/status"


class CountingAgent:
    def __init__(self):
        self.calls = []

    @hookimpl
    def sophon_agents(self):
        outer = self

        class A:
            id = "counting"

            def reply(self, message, history):
                outer.calls.append(message.text)
                return f"re: {message.text}"

        return [A()]


@pytest.fixture
def app(sms_runtime, account):
    def make(extra_channel=None, **env):
        agent = CountingAgent()
        ch = sms_channel(account, routing={"agentId": "counting", "dmBehavior": "per-peer"},
                         **(extra_channel or {}))
        rt = sms_runtime([ch], extra=[agent], SOPHON_RETRY_BASE="0.05", **env)
        return rt, falcon.testing.TestClient(create_app(rt)), agent
    return make


def text(client, account, body, sender=PEER, sid=None):
    r = post_signed(client, account.auth_token, inbound_form(account.sid, body, sender=sender, sid=sid))
    assert r.status_code == 200, r.text


def settle(rt, timeout=10):
    """Move what the webhooks journaled into the store, then wait until no job is queued or running."""
    rt.pipeline.settle()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = rt.store.job_states()
        if not states.get("queued") and not states.get("running"):
            return
        time.sleep(0.05)
    raise AssertionError(rt.store.job_states())


def today(rt, channel="sms-twilio"):
    return next(iter(rt.store.usage().values()), {}) if rt.store.usage() else {}


@pytest.mark.parametrize("word", ["STOP", " stop ", "Unsubscribe", "optout", "QUIT", "end", "revoke",
                                  "cancel", "StopAll"])
def test_opt_out_keywords_are_recorded_and_never_answered(app, account, sandbox, word):
    rt, client, agent = app()
    text(client, account, word)
    settle(rt)
    time.sleep(0.2)
    assert agent.calls == [] and sandbox.messages() == []
    assert rt.store.opted_out("sms-twilio", PEER)


def test_after_stop_nothing_is_sent_until_start(app, account, sandbox):
    rt, client, agent = app()
    text(client, account, "STOP")
    text(client, account, "are you there?")
    settle(rt)
    assert agent.calls == [] and sandbox.messages() == []
    skipped = [m for m in rt.store.recent() if m["direction"] == "out"]
    assert [(m["status"], m["error"]) for m in skipped] == [("skipped", "recipient opted out")]
    text(client, account, "START")
    settle(rt)
    assert sandbox.messages() == []  # Twilio answers START itself
    text(client, account, "hello again")
    (m,) = sandbox.wait_for_messages(1, to=PEER)
    assert m["form"]["Body"] == "re: hello again" and agent.calls == ["hello again"]


@pytest.mark.parametrize("word", ["HELP", "info"])
def test_help_does_not_run_the_agent(app, account, sandbox, word):
    rt, client, agent = app()
    text(client, account, word)
    settle(rt)
    time.sleep(0.2)
    assert agent.calls == [] and sandbox.messages() == []
    assert not rt.store.opted_out("sms-twilio", PEER)


def test_twilio_21610_records_the_opt_out_and_later_replies_are_skipped(app, account, sandbox):
    rt, client, agent = app()
    sandbox.opt_out(PEER)  # they texted STOP to Twilio directly
    text(client, account, "one")
    settle(rt)
    assert rt.store.opted_out("sms-twilio", PEER)
    text(client, account, "two")
    settle(rt)
    posts = [r for r in sandbox.requests() if r["path"].endswith("/Messages.json")]
    assert len(posts) == 1 and agent.calls == ["one"]


def test_allowlist_channel_ignores_strangers(app, account, sandbox, caplog):
    rt, client, agent = app({"access": {"mode": "allowlist", "allow": [PEER]}})
    text(client, account, "let me in", sender="+15559990000")
    text(client, account, "hi", sender=PEER)
    (m,) = sandbox.wait_for_messages(1)
    settle(rt)
    assert m["form"]["To"] == PEER and agent.calls == ["hi"]
    assert "+15559990000 is not on the allowlist of channel sms-twilio" in caplog.text
    assert today(rt)["blocked"] == 1


def test_per_sender_rate_limit(app, account, sandbox):
    rt, client, agent = app({"limits": {"sendRate": 1000, "inboundPerSenderPerHour": 2}})
    for i in range(4):
        text(client, account, f"m{i}")
    text(client, account, "other sender", sender="+15557770000")
    settle(rt)
    assert sorted(agent.calls) == ["m0", "m1", "other sender"]
    assert today(rt)["rate_limited"] == 2
    assert [m["status"] for m in rt.store.recent() if m["direction"] == "in"].count("rate-limited") == 2


def test_daily_budget_stops_sending(app, account, sandbox, caplog):
    rt, client, agent = app({"limits": {"sendRate": 1000, "dailyOutboundUnits": 3}})
    for i in range(3):
        text(client, account, f"m{i} " + "x" * 160, sender=f"+1555000000{i}")  # replies take 2 segments each
        settle(rt)
    assert len(sandbox.messages()) == 1
    usage = today(rt)
    assert usage["units_out"] == 2 and usage["skipped_budget"] == 2
    assert "reached its daily budget of 3 units" in caplog.text


def test_pacing_spaces_sends_per_number(app, account, sandbox):
    rt, client, agent = app({"limits": {"sendRate": 5}})
    slots = []
    reserve = rt.store.reserve_send_slot
    rt.store.reserve_send_slot = lambda *a: slots.append(reserve(*a)) or slots[-1]
    for i in range(6):
        text(client, account, f"m{i}", sender=f"+1555000010{i}")
    msgs = sandbox.wait_for_messages(6, timeout=15)
    # The number's slots are 0.2 s apart (1 segment at 5 per second), and no send reaches
    # Twilio before its slot (one sent late on a slow machine cannot make this fail).
    slots.sort()
    assert len(slots) == 6 and all(b - a >= 0.2 - 1e-6 for a, b in zip(slots, slots[1:])), slots
    times = sorted(m["received_at"] for m in msgs)
    assert all(t >= slot for t, slot in zip(times, slots)), (times, slots)


def signed_status(client, account, sid, status, code=None, token=None):
    form = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
            "AccountSid": account.sid, "From": NUMBER, "To": PEER, "ApiVersion": "2010-04-01"}
    if code:
        form["ErrorCode"] = code
    return post_signed(client, token or account.auth_token, form, url=PUBLIC + STATUS, path=STATUS)


def test_status_callbacks_move_forward_only_and_keep_the_error(app, account, sandbox):
    rt, client, agent = app()
    text(client, account, "hello")
    (m,) = sandbox.wait_for_messages(1, to=PEER)
    settle(rt)
    assert m["form"]["StatusCallback"] == PUBLIC + STATUS
    sid = m["response"]["sid"]

    def status():
        return next((o["status"], o["error"]) for o in rt.store.recent() if o["provider_id"] == sid)

    assert status() == ("queued", None)
    assert signed_status(client, account, sid, "sent").status_code == 200
    assert signed_status(client, account, sid, "undelivered", code="30003").status_code == 200
    assert status() == ("undelivered", "Twilio 30003: the handset is unreachable (off or out of coverage)")
    assert signed_status(client, account, sid, "sending").status_code == 200  # late, out of order
    assert signed_status(client, account, sid, "queued").status_code == 200
    assert status()[0] == "undelivered"
    assert signed_status(client, account, sid, "sent", token="wrong-token").status_code == 403
    assert signed_status(client, account, "SM" + "0" * 32, "delivered").status_code == 200  # unknown: ack


def test_usage_counts_messages_and_segments_both_ways(app, account, sandbox):
    rt, client, agent = app()
    text(client, account, "hi")
    text(client, account, "ж" * 100, sender="+15550000009")  # UCS-2: "re: " + 100 chars = 2 segments
    sandbox.wait_for_messages(2)
    settle(rt)
    usage = today(rt)
    assert (usage["messages_in"], usage["messages_out"], usage["units_out"]) == (2, 2, 3)


def test_status_callback_bad_input(app, account, sandbox):
    rt, client, agent = app()
    big = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "sent", "From": NUMBER, "AccountSid": account.sid,
           "Pad": "x" * (70 * 1024)}
    assert post_signed(client, account.auth_token, big, url=PUBLIC + STATUS, path=STATUS).status_code == 413
    missing = {"MessageSid": "SM" + "1" * 32, "From": NUMBER, "AccountSid": account.sid}
    r = post_signed(client, account.auth_token, missing, url=PUBLIC + STATUS, path=STATUS)
    assert r.status_code == 400 and "MessageStatus" in r.text
    r = post_signed(client, account.auth_token, missing, url=PUBLIC + STATUS, path=STATUS, signature="")
    assert r.status_code == 403


def test_a_stop_during_the_pacing_wait_stops_the_send(app, account, sandbox):
    rt, client, agent = app({"limits": {"sendRate": 0.25}})
    text(client, account, "first", sender="+15550000101")
    text(client, account, "second", sender="+15550000102")
    (m,) = sandbox.wait_for_messages(1, timeout=10)
    waiting = "+15550000102" if m["form"]["To"] == "+15550000101" else "+15550000101"
    text(client, account, "STOP", sender=waiting)  # while its reply waits for the next slot, 4 s later
    settle(rt)
    time.sleep(0.5)
    assert [x["form"]["To"] for x in sandbox.messages()] == [m["form"]["To"]]
    assert today(rt)["skipped_opted_out"] == 1


class TwoParts:
    @hookimpl
    def sophon_agents(self):
        class A:
            id = "two-parts"

            def reply(self, message, history):
                return "First part. " + "a " * 700 + "\n\nSecond part. " + "b " * 300

        return [A()]


def test_a_stop_between_the_parts_of_a_reply_skips_the_rest(sms_runtime, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=None, delay=0)       # part 1 goes
    sandbox.inject(path_suffix="/Messages.json", status=429, code=20429, retry_after=3)  # part 2: wait
    rt = sms_runtime([sms_channel(account, routing={"agentId": "two-parts", "dmBehavior": "per-peer"})],
                     extra=[TwoParts()], SOPHON_RETRY_BASE="0.05")
    client = falcon.testing.TestClient(create_app(rt))
    text(client, account, "tell me")
    sandbox.wait_for_messages(1, to=PEER)
    text(client, account, "STOP")
    settle(rt, timeout=15)
    assert [m["form"]["Body"][:11] for m in sandbox.messages()] == ["First part."]
    parts = [m for m in reversed(rt.store.recent()) if m["direction"] == "out"]
    assert [(p["status"], p["error"]) for p in parts] == [("queued", None), ("skipped", "recipient opted out")]
    assert rt.store.job_states() == {"done": 1}


def test_retry_after_holds_back_every_reply_from_that_number(app, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=429, code=20429, retry_after=1)
    rt, client, agent = app()
    text(client, account, "one", sender="+15550000201")
    deadline = time.monotonic() + 10  # until the 429 was answered and "one" waits for its retry
    while not (any(r["path"].endswith("/Messages.json") for r in sandbox.requests())
               and rt.store.job_states() == {"queued": 1}):
        assert time.monotonic() < deadline, rt.store.job_states()
        time.sleep(0.02)
    text(client, account, "two", sender="+15550000202")
    sandbox.wait_for_messages(2, timeout=15)
    posts = [r for r in sandbox.requests() if r["path"].endswith("/Messages.json")]
    assert len(posts) == 3
    assert all(p["received_at"] - posts[0]["received_at"] >= 1.0 for p in posts[1:])
