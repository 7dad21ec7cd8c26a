"""Sending well: retries with backoff on temporary Twilio failures, none on permanent ones.

Fault injection against the sandbox; each test asserts what reached the sandbox
(count, order, bodies) and what the store holds.
"""
from __future__ import annotations

import time

import falcon.testing
import pytest

from sophon_core.app import create_app
from sophon_core.hookspecs import hookimpl

from sms_helpers import NUMBER, PEER, inbound_form, post_signed, sms_channel

FAST_RETRY = {"SOPHON_RETRY_BASE": "0.05"}


@pytest.fixture
def app(sms_runtime, account):
    def make(channels=None, extra=(), **env):
        rt = sms_runtime(channels or [sms_channel(account)], extra=extra, **{**FAST_RETRY, **env})
        return rt, falcon.testing.TestClient(create_app(rt))
    return make


def message_posts(sandbox):
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"].endswith("/Messages.json")]


def wait_for_job(rt, state, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rt.store.job_states().get(state):
            return
        time.sleep(0.05)
    raise AssertionError(f"no job reached {state!r}: {rt.store.job_states()}")


def outbound(rt):
    return [m for m in reversed(rt.store.recent()) if m["direction"] == "out"]


@pytest.mark.parametrize("fault", [
    dict(status=429, code=20429),
    dict(status=500),
    dict(status=503, times=2),
    dict(reset=True),
], ids=["429", "500", "503x2", "connection-reset"])
def test_temporary_failures_are_retried_until_twilio_accepts(app, account, sandbox, fault):
    sandbox.inject(path_suffix="/Messages.json", **fault)
    rt, client = app()
    assert post_signed(client, account.auth_token, inbound_form(account.sid, "hi")).status_code == 200
    (m,) = sandbox.wait_for_messages(1, to=PEER, timeout=15)
    wait_for_job(rt, "done")
    posts = message_posts(sandbox)
    assert len(posts) == 1 + fault.get("times", 1)
    assert [p["form"]["Body"] for p in posts] == [m["form"]["Body"]] * len(posts)
    (part,) = outbound(rt)
    assert (part["status"], part["provider_id"]) == ("queued", m["response"]["sid"])


def test_retry_after_is_honoured(app, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=429, code=20429, retry_after=1)
    rt, client = app()
    post_signed(client, account.auth_token, inbound_form(account.sid))
    sandbox.wait_for_messages(1, to=PEER, timeout=15)
    first, second = message_posts(sandbox)
    assert second["received_at"] - first["received_at"] >= 1.0


@pytest.mark.parametrize("setup,code,words", [
    ("opt_out", 21610, "replied STOP"),
    ("trial", 21608, "Trial account limitation"),
    ("auth", 20003, "Authentication error: the Account SID or Auth Token is wrong"),
    ("bad_to", 21211, "is not a valid phone number"),
])
def test_permanent_failures_are_not_retried(app, account, sandbox, setup, code, words):
    ch = sms_channel(account)
    sender = PEER
    if setup == "opt_out":
        sandbox.opt_out(PEER)
    elif setup == "trial":
        trial = sandbox.add_account(type="Trial")
        sandbox.add_number(trial.sid, "+15005550009")
        ch, account = sms_channel(trial, number="+15005550009"), trial
    elif setup == "auth":
        ch["config"]["authToken"] = "0" * 32  # webhooks signed with it pass; Twilio's API refuses it
    elif setup == "bad_to":
        sender = "+0123"
    rt, client = app([ch])
    form = inbound_form(account.sid, to=ch["config"]["phoneNumber"], sender=sender)
    assert post_signed(client, ch["config"]["authToken"], form).status_code == 200
    wait_for_job(rt, "failed")
    time.sleep(0.3)
    assert len(message_posts(sandbox)) == 1  # tried once, never again
    (part,) = outbound(rt)
    assert part["status"] == "failed" and words in part["error"]
    assert sandbox.messages() == []


def test_a_reply_is_given_up_after_the_retry_window(app, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=500, times=1000)
    rt, client = app(SOPHON_RETRY_FOR="1")
    post_signed(client, account.auth_token, inbound_form(account.sid))
    wait_for_job(rt, "failed", timeout=15)
    (part,) = outbound(rt)
    assert part["status"] == "failed" and part["error"].startswith("gave up after")
    assert 2 <= len(message_posts(sandbox)) <= 30


class LongAgent:
    @hookimpl
    def sophon_agents(self):
        class A:
            id = "long"

            def reply(self, message, history):
                return "\n\n".join(f"Part {i}. " + "word " * 300 for i in range(3))

        return [A()]


def test_a_split_reply_resumes_after_the_part_that_failed(app, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=None, delay=0)  # first part passes
    sandbox.inject(path_suffix="/Messages.json", status=500)           # second part fails once
    rt, client = app([sms_channel(account, routing={"agentId": "long"})], extra=[LongAgent()])
    post_signed(client, account.auth_token, inbound_form(account.sid))
    msgs = sandbox.wait_for_messages(3, to=PEER, timeout=15)
    wait_for_job(rt, "done")
    bodies = [m["form"]["Body"] for m in msgs]
    assert [b.split(".")[0] for b in bodies] == ["Part 0", "Part 1", "Part 2"]  # in order, none twice
    assert len(message_posts(sandbox)) == 4
    assert [p["status"] for p in outbound(rt)] == ["queued"] * 3
    assert all(m["form"]["From"] == NUMBER for m in msgs)


@pytest.mark.parametrize("status,code,permanent", [
    (429, 20429, False), (429, 30001, False), (400, 30001, False), (503, 20503, False),
    (400, 21610, True), (400, 21614, True), (401, 20003, True), (400, 21211, True),
])
def test_error_mapping_uses_the_product_pages_words(status, code, permanent):
    from twilio.base.exceptions import TwilioRestException

    from sophon_sms_twilio.errors import QUEUE_OVERFLOW, send_error

    err = send_error(TwilioRestException(status, "https://x", "msg", code), to=PEER, from_=NUMBER,
                     retry_after=2.0)
    assert err.permanent is permanent and err.code == code and err.retry_after == 2.0
    if code in (20429, 30001):
        assert str(err) == QUEUE_OVERFLOW


def test_a_slow_twilio_delays_the_reply_not_the_webhook(app, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=None, delay=5.0)
    rt, client = app()
    started = time.monotonic()
    assert post_signed(client, account.auth_token, inbound_form(account.sid)).status_code == 200
    assert time.monotonic() - started < 4.0  # Twilio takes 5 s; the webhook does not wait for it
    sandbox.wait_for_messages(1, to=PEER, timeout=15)
    wait_for_job(rt, "done")
    assert len(message_posts(sandbox)) == 1  # slow is not failed: sent once
