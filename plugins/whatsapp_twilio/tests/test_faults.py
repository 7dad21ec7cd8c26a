"""Sending well on WhatsApp: retries on temporary Twilio failures, none on permanent ones,
and files people send that cannot be fetched safely.

Fault injection against the sandbox, all real HTTP on loopback: the sandbox's phone posts
signed webhooks to the app (an in-process runtime behind a threaded WSGI server, so the
store can be read; gunicorn for the media faults, to show no worker dies), the replies go
to the sandbox's REST API, its delivery reports come back. Each test asserts what reached
the sandbox (count, order, bodies) and what the store holds.
"""
from __future__ import annotations

import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests
from twilio.request_validator import RequestValidator

from sophon_core.app import create_app
from sophon_core.hookspecs import hookimpl
from sophon_core.testing import free_port, gunicorn
from sophon_sms_twilio.webhook import EMPTY_TWIML

from wa_helpers import WA_PEER, WA_SENDER, WEBHOOK, wa_channel, wa_form

pytestmark = pytest.mark.e2e
FAST_RETRY = {"SOPHON_RETRY_BASE": "0.05"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def live(wa_runtime, account):
    """The app in this process, served over real HTTP on loopback; yields (runtime, public URL)."""
    servers = []

    def make(channels=None, extra=(), **env):
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        rt = wa_runtime(channels or [wa_channel(account)], extra=extra,
                        **{**FAST_RETRY, "SOPHON_PUBLIC_URL": public, **env})
        httpd = make_server("127.0.0.1", port, create_app(rt), server_class=_ThreadingWSGIServer,
                            handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return rt, public

    yield make
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def message_posts(sandbox):
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"].endswith("/Messages.json")]


def wait_for_job(rt, state, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rt.store.job_states().get(state):
            return
        time.sleep(0.05)
    raise AssertionError(f"no job reached {state!r}: {rt.store.job_states()}")


def wait_for_status(rt, sid, status, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in rt.store.recent() if m["provider_id"] == sid]
        if found and found[0]["status"] == status:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{sid} never became {status!r}: {[m for m in rt.store.recent() if m['provider_id'] == sid]}")


def outbound(rt):
    return [m for m in reversed(rt.store.recent()) if m["direction"] == "out"]


def post_direct(public, token, form):
    """A signed webhook the sandbox's phone would not send (it refuses bad addresses)."""
    sig = RequestValidator(token).compute_signature(public + WEBHOOK, form)
    return requests.post(public + WEBHOOK, data=form, headers={"X-Twilio-Signature": sig}, timeout=10)


@pytest.mark.parametrize("fault", [
    dict(status=429, code=20429),
    dict(status=429, code=63018),  # WhatsApp's own rate limit for the sender
    dict(status=500),
    dict(status=503, times=2),
    dict(reset=True),
], ids=["429", "429-63018", "500", "503x2", "connection-reset"])
def test_temporary_failures_are_retried_until_twilio_accepts(live, account, sandbox, fault):
    sandbox.inject(path_suffix="/Messages.json", **fault)
    rt, public = live()
    assert sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="hi", url=public + WEBHOOK) == (200, EMPTY_TWIML)
    (m,) = sandbox.wait_for_messages(1, to=WA_PEER, timeout=15)
    wait_for_job(rt, "done")
    posts = message_posts(sandbox)
    assert len(posts) == 1 + fault.get("times", 1)
    assert [p.get("injected") for p in posts] == ["reset" if fault.get("reset") else "error"] * (len(posts) - 1) + [None]
    assert [p["form"]["Body"] for p in posts] == [m["form"]["Body"]] * len(posts)
    assert m["form"]["Body"] == 'Sophon default agent. You said: "hi"'
    # answered exactly once: one part, with the id of the one message Twilio accepted
    part = wait_for_status(rt, m["response"]["sid"], "delivered")
    assert outbound(rt) == [part] and part["error"] is None
    time.sleep(0.2)
    assert len(sandbox.messages()) == 1 and len(message_posts(sandbox)) == len(posts)


def test_retry_after_is_honoured(live, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=429, code=20429, retry_after=1)
    rt, public = live()
    sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="hi", url=public + WEBHOOK)
    sandbox.wait_for_messages(1, to=WA_PEER, timeout=15)
    first, second = message_posts(sandbox)
    assert first["status"] == 429 and second["status"] == 201
    assert second["received_at"] - first["received_at"] >= 1.0


def test_a_slow_twilio_delays_the_reply_not_the_webhook(live, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=None, delay=5.0)
    rt, public = live()
    started = time.monotonic()
    assert sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="hi", url=public + WEBHOOK)[0] == 200
    assert time.monotonic() - started < 4.0  # Twilio takes 5 s; the webhook does not wait for it
    (m,) = sandbox.wait_for_messages(1, to=WA_PEER, timeout=15)
    wait_for_job(rt, "done")
    time.sleep(0.2)
    assert len(message_posts(sandbox)) == 1  # slow is not failed: sent once
    wait_for_status(rt, m["response"]["sid"], "delivered")


@pytest.mark.parametrize("setup,code,words", [
    ("not_a_whatsapp_sender", 63007, ["not a WhatsApp sender of this Twilio account", "63007", "phoneNumber"]),
    ("bad_to", 21211, ["whatsapp:+0123 is not a valid WhatsApp address (Twilio 21211)"]),
    ("auth", 20003, ["Authentication error: the Account SID or Auth Token is wrong"]),
])
def test_permanent_failures_are_recorded_not_retried(live, account, sandbox, setup, code, words):
    ch, sender, token = wa_channel(account), WA_PEER, account.auth_token
    if setup == "not_a_whatsapp_sender":
        sandbox.add_number(account.sid, "+15005550030")  # the account's, but SMS only
        ch = wa_channel(account, number="+15005550030")
    elif setup == "bad_to":
        sender = "whatsapp:+0123"
    elif setup == "auth":
        token = ch["config"]["authToken"] = "0" * 32  # webhooks signed with it pass; Twilio's API refuses it
    rt, public = live([ch])
    form = wa_form(account.sid, "hi", sender=sender, to="whatsapp:" + ch["config"]["phoneNumber"])
    r = post_direct(public, token, form)
    assert (r.status_code, r.text) == (200, EMPTY_TWIML)
    wait_for_job(rt, "failed")
    time.sleep(0.3)  # long past the retry backoff
    (post,) = message_posts(sandbox)  # tried once, never again
    assert post["status"] == (401 if code == 20003 else 400)
    (part,) = outbound(rt)
    assert part["status"] == "failed" and all(w in part["error"] for w in words), part
    assert rt.store.job_states() == {"failed": 1}
    assert sandbox.messages() == []


def test_a_reply_is_given_up_after_the_retry_window(live, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=500, times=1000)
    rt, public = live(SOPHON_RETRY_FOR="1")
    sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="hi", url=public + WEBHOOK)
    wait_for_job(rt, "failed", timeout=15)
    (part,) = outbound(rt)
    assert part["status"] == "failed" and part["error"].startswith("gave up after")
    assert 2 <= len(message_posts(sandbox)) <= 30
    assert sandbox.messages() == []


class LongAgent:
    @hookimpl
    def sophon_agents(self):
        class A:
            id = "long"

            def reply(self, message, history):
                return "\n\n".join(f"Part {i}. " + "word " * 250 for i in range(3))  # ~1260 chars each

        return [A()]


def test_a_split_reply_resumes_after_the_part_that_failed(live, account, sandbox):
    sandbox.inject(path_suffix="/Messages.json", status=None, delay=0)  # first part passes
    sandbox.inject(path_suffix="/Messages.json", status=500)           # second part fails once
    rt, public = live([wa_channel(account, routing={"agentId": "long", "dmBehavior": "per-peer"})],
                      extra=[LongAgent()])
    sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="tell me", url=public + WEBHOOK)
    msgs = sandbox.wait_for_messages(3, to=WA_PEER, timeout=15)
    wait_for_job(rt, "done")
    bodies = [m["form"]["Body"] for m in msgs]
    assert [b.split(".")[0] for b in bodies] == ["Part 0", "Part 1", "Part 2"]  # in order, none twice
    assert all(len(b) <= 1600 for b in bodies)
    assert len(message_posts(sandbox)) == 4
    assert all(m["form"]["From"] == WA_SENDER for m in msgs)
    for m in msgs:
        wait_for_status(rt, m["sid"], "delivered")
    assert [p["provider_id"] for p in outbound(rt)] == [m["sid"] for m in msgs]


def test_files_sophon_must_not_fetch_are_refused_and_the_text_still_answered(sandbox, account, wa_env, foreign,
                                                                              tmp_path):
    """A redirect off Twilio, a file served as another type than declared, a media URL on
    another host: the text is answered, the person is told the file did not arrive, the
    foreign host gets nothing, and no gunicorn worker dies."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = wa_env([wa_channel(account)], SOPHON_PUBLIC_URL=public, **FAST_RETRY)
    log = tmp_path / "gunicorn.log"
    cases = {}
    with gunicorn(env, port=port, workers=2, log=log) as server:
        workers = server.worker_pids()
        for name, media_kwargs in [("redirect", dict(redirect_to=foreign.url + "/stolen.png")),
                                   ("lying-type", dict(served_type="text/html")),
                                   ("foreign-url", None)]:
            peer = f"whatsapp:+155500{len(cases):05d}"
            sid = f"MM{time.time_ns():032x}"[:34]
            if media_kwargs is None:
                url = foreign.url + f"/2010-04-01/Accounts/{account.sid}/Messages/{sid}/Media/ME{'0' * 32}"
            else:
                url = sandbox.add_media(account.sid, sid, PNG, "image/png", **media_kwargs)
            status, _ = sandbox.send_inbound(from_=peer, to=WA_SENDER, body=f"pic {name}", media=[(url, "image/png")],
                                             message_sid=sid, url=public + WEBHOOK)
            assert status == 200
            cases[name] = peer
        sandbox.wait_for_messages(3, timeout=15)
        time.sleep(0.3)
        assert server.worker_pids() == workers  # no worker died
        assert requests.get(public + "/healthz", timeout=5).status_code == 200

    reasons = {
        "redirect": f"not fetched: Twilio's answer redirected to {foreign.url}, which is not a Twilio media host",
        "lying-type": "refused: the file was declared image/png but served as text/html",
        "foreign-url": f"not fetched: {foreign.url} is not a Twilio media host",
    }
    for name, peer in cases.items():
        (m,) = sandbox.messages(to=peer)
        assert m["form"]["Body"] == (f'Sophon default agent. You said: "pic {name}" Files not received: '
                                     f"image/png: {reasons[name]}."), name
        assert "MediaUrl" not in m["form"]  # nothing to send back
    assert foreign.requests == []  # never reached, with or without credentials
    # the redirect and the lying type were fetched from the sandbox with the account's credentials
    media_gets = [r for r in sandbox.requests() if r["method"] == "GET" and "/Media/" in r["path"]]
    assert sorted((r["status"], r["auth_user"]) for r in media_gets) == [(307, account.sid)] * 2
    cdn = [r for r in sandbox.requests() if r.get("cdn")]
    assert [(r["status"], r["authorization"]) for r in cdn] == [(200, False)]  # only the lying one got that far
    text = log.read_text()
    assert "Traceback" not in text and account.auth_token not in text
    assert text.count("not handed to the agent") == 3
