"""End to end: real gunicorn, real sandbox, real HTTP both ways, on loopback.

The sandbox's phone posts signed WhatsApp webhooks to the server; the server's replies
reach the sandbox's REST API; the sandbox fetches the files Sophon sends from Sophon's
signed media URLs and posts its delivery reports (status callbacks) back to Sophon.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from twilio.request_validator import RequestValidator

from sophon_core.testing import free_port, gunicorn
from sophon_sms_twilio.webhook import EMPTY_TWIML
from sophon_whatsapp_twilio.errors import OUTSIDE_WINDOW, delivery_error

from wa_helpers import PEER, PLUGINS, STATUS, WA_PEER, WA_SENDER, WEBHOOK, wa_channel, wa_form

pytestmark = pytest.mark.e2e
SOPHON = [sys.executable, "-c", "from sophon_core.cli import main; main()"]
META_SENDER = "+15005550021"  # a second WhatsApp sender, routed to the metadata agent
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"end"
SLOW_AGENT_DIST = Path(__file__).resolve().parents[2] / "sms_twilio" / "tests" / "slow_agent_dist"

META_AGENT = '''\
import json

from sophon_core.hookspecs import hookimpl


class MetaEcho:
    id = "wa-meta"

    def reply(self, message, history):
        return "meta " + json.dumps({"metadata": dict(message.metadata), "sender": message.sender,
                                     "text": message.text}, sort_keys=True)


@hookimpl
def sophon_agents():
    return [MetaEcho()]
'''


def meta_agent_dist(folder: Path) -> Path:
    """A throwaway agent plugin that gunicorn's workers load through an entry point."""
    folder.mkdir()
    (folder / "wa_meta_agent_plugin.py").write_text(META_AGENT)
    info = folder / "sophon_wa_meta_agent-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sophon-wa-meta-agent\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sophon]\nwa_meta_agent = wa_meta_agent_plugin\n")
    return folder


def rows(env) -> list[dict]:
    """Sophon's message log, oldest first, straight from its SQLite file."""
    db = sqlite3.connect(f"file:{Path(env['SOPHON_DATA_DIR']) / 'sophon.db'}?mode=ro", uri=True, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM messages ORDER BY id")]
    finally:
        db.close()


def wait_until(check, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}")
        time.sleep(0.05)


def message_posts(sandbox):
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"].endswith("/Messages.json")]


@pytest.fixture
def server(sandbox, account, wa_env, tmp_path):
    """Start gunicorn (2 workers) for the account's WhatsApp sender; yields (public URL, env, log)."""
    started = []

    def start(channels=None, workers=2, **more):
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        env = wa_env(channels or [wa_channel(account)], SOPHON_PUBLIC_URL=public, **more)
        log = tmp_path / "gunicorn.log"
        ctx = gunicorn(env, port=port, workers=workers, log=log)
        srv = ctx.__enter__()
        started.append(ctx)
        return public, env, log, srv

    yield start
    for ctx in reversed(started):
        ctx.__exit__(None, None, None)


def test_signed_whatsapp_message_to_gunicorn_is_answered_through_twilios_api(sandbox, account, server, tmp_path):
    sandbox.add_number(account.sid, META_SENDER, whatsapp=True)
    meta = wa_channel(account, cid="wa-meta", number=META_SENDER, routing={"agentId": "wa-meta",
                                                                           "dmBehavior": "per-peer"})
    dist = meta_agent_dist(tmp_path / "dist")
    public, env, log, _ = server(
        [wa_channel(account), meta], SOPHON_PLUGINS=PLUGINS + ",wa_meta_agent",
        PYTHONPATH=os.pathsep.join(filter(None, [str(dist), os.environ.get("PYTHONPATH")])))

    status, body = sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="hello", profile_name="Ada Lovelace",
                                        url=public + WEBHOOK)
    assert (status, body) == (200, EMPTY_TWIML)
    (m,) = sandbox.wait_for_messages(1, to=WA_PEER, timeout=15)
    assert m["form"]["Body"] == 'Sophon default agent. You said: "hello"'
    assert (m["form"]["From"], m["form"]["To"]) == (WA_SENDER, WA_PEER)
    assert m["auth_user"] == account.sid and m["account_sid"] == account.sid
    assert m["form"]["StatusCallback"] == public + STATUS
    assert "MediaUrl" not in m["form"]

    # the sender's profile name and WhatsApp id reach the agent as metadata
    status, _ = sandbox.send_inbound(from_=WA_PEER, to=f"whatsapp:{META_SENDER}", body="who am I?",
                                     profile_name="Ada Lovelace", url=public + WEBHOOK)
    assert status == 200
    wait_until(lambda: len(sandbox.messages(to=WA_PEER)) == 2, what="the metadata agent's reply")
    (meta_reply,) = [x for x in sandbox.messages(to=WA_PEER) if x["form"]["From"] == f"whatsapp:{META_SENDER}"]
    assert json.loads(meta_reply["form"]["Body"].removeprefix("meta ")) == {
        "metadata": {"profileName": "Ada Lovelace", "waId": PEER.lstrip("+")}, "sender": WA_PEER,
        "text": "who am I?"}

    # a forged signature never reaches the agent
    status, _ = sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="forged", signature="bm9wZQ==",
                                     url=public + WEBHOOK)
    assert status == 403
    # the first reply's delivery reports (sent, delivered) reach Sophon and move its status forward
    callbacks = sandbox.wait_for_callbacks(2, message_sid=m["sid"], timeout=10)
    assert [(c["form"]["MessageStatus"], c["url"], c["status"]) for c in callbacks] == [
        ("sent", public + STATUS, 200), ("delivered", public + STATUS, 200)]
    time.sleep(0.3)  # a reply to the forged message would have been sent by now

    assert [x["form"]["Body"] for x in sandbox.messages()].count('Sophon default agent. You said: "forged"') == 0
    assert len(message_posts(sandbox)) == 2
    text = log.read_text()
    assert "X-Twilio-Signature does not match" in text
    assert account.auth_token not in text

    # the operator's view of what happened, once the second reply's reports were answered too
    meta_callbacks = sandbox.wait_for_callbacks(2, message_sid=meta_reply["sid"], timeout=10)
    assert [(c["form"]["MessageStatus"], c["status"]) for c in meta_callbacks] == [("sent", 200), ("delivered", 200)]
    cli_env = {**os.environ, **env}
    out = subprocess.run([*SOPHON, "messages", "--json"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = [(r["channel_id"], r["direction"], r["peer"], r["status"]) for r in reversed(json.loads(out.stdout))]
    assert got == [("wa", "in", WA_PEER, "received"), ("wa", "out", WA_PEER, "delivered"),
                   ("wa-meta", "in", WA_PEER, "received"), ("wa-meta", "out", WA_PEER, "delivered")]
    by_sid = {r["provider_id"]: r for r in json.loads(out.stdout) if r["direction"] == "out"}
    assert set(by_sid) == {m["sid"], meta_reply["sid"]}
    assert by_sid[m["sid"]]["text"] == m["form"]["Body"] and by_sid[m["sid"]]["error"] is None
    assert account.auth_token not in out.stdout + out.stderr


def test_a_picture_goes_both_ways(sandbox, account, server):
    public, env, log, _ = server()
    status, body = sandbox.send_inbound(from_=WA_PEER, to=WA_SENDER, body="look", media_files=[(PNG, "image/png")],
                                        profile_name="Ada", url=public + WEBHOOK)
    assert (status, body) == (200, EMPTY_TWIML)
    (inbound,) = sandbox.inbound()
    media_url = inbound["form"]["MediaUrl0"]
    (m,) = sandbox.wait_for_messages(1, to=WA_PEER, timeout=15)
    assert m["form"]["Body"] == (f'Sophon default agent. You said: "look" You sent: image/png, {len(PNG)} bytes. '
                                 "Here they are back.")
    (sent_url,) = m["form_multi"]["MediaUrl"]  # WhatsApp: one file per message
    assert sent_url.startswith(public + "/media/") and "expires=" in sent_url and "signature=" in sent_url

    # Sophon fetched the picture from Twilio: the media URL with the account's credentials,
    # then the CDN it redirected to, without them
    gets = [r for r in sandbox.requests() if r["method"] == "GET"]
    assert [(r["path"], r["status"], r["auth_user"], r.get("cdn", False)) for r in gets] == [
        (media_url.removeprefix(sandbox.url), 307, account.sid, False),
        (gets[1]["path"], 200, None, True)]
    assert gets[1]["authorization"] is False and gets[1]["path"].startswith("/_media/")
    # the agent had the very bytes (kept for it in the data folder)
    (kept,) = (Path(env["SOPHON_DATA_DIR"]) / "media" / "in").iterdir()
    assert kept.read_bytes() == PNG

    # Twilio fetched the same bytes back from Sophon's signed URL, and delivered them
    settled = sandbox.wait_for_status(m["sid"], "delivered", timeout=10)
    (fetched,) = settled["media_fetched"]
    assert fetched["url"] == sent_url
    assert (fetched["status"], fetched["content_type"], fetched["size"], fetched["sha256"], fetched["error"]) == (
        200, "image/png", len(PNG), hashlib.sha256(PNG).hexdigest(), None)
    assert settled["media_delivered"] == sent_url and settled["error_code"] is None

    # the delivery reports reached Sophon: the part is delivered
    callbacks = sandbox.wait_for_callbacks(2, message_sid=m["sid"], timeout=10)
    assert [(c["form"]["MessageStatus"], c["status"]) for c in callbacks] == [("sent", 200), ("delivered", 200)]
    (part,) = [r for r in rows(env) if r["direction"] == "out"]
    assert (part["provider_id"], part["status"], part["error"]) == (m["sid"], "delivered", None)
    assert [f["content_type"] for f in json.loads(part["media"])] == ["image/png"]

    # the signed link is the only way in
    assert requests.get(sent_url, timeout=5).content == PNG
    assert requests.get(sent_url.replace("signature=", "signature=0"), timeout=5).status_code == 403
    assert requests.get(sent_url.split("?")[0], timeout=5).status_code == 403
    assert account.auth_token not in log.read_text()


def test_a_reply_outside_the_24_hour_window_is_recorded_as_failed_not_retried(sandbox, account, server):
    public, env, log, _ = server(SOPHON_RETRY_BASE="0.05")
    sandbox.close_window(WA_PEER, WA_SENDER)  # the person last wrote more than 24 hours ago
    # a message the sandbox's phone did not send (so the window stays closed): e.g. one
    # Twilio redelivers a day late
    form = wa_form(account.sid, "still there?")
    sig = RequestValidator(account.auth_token).compute_signature(public + WEBHOOK, form)
    r = requests.post(public + WEBHOOK, data=form, headers={"X-Twilio-Signature": sig}, timeout=10)
    assert (r.status_code, r.text) == (200, EMPTY_TWIML)
    assert not sandbox.window_open(WA_PEER, WA_SENDER)

    (m,) = sandbox.wait_for_messages(1, to=WA_PEER, timeout=15)  # Twilio's API took it (201) ...
    assert m["response"]["status"] == "queued" and m["window_open"] is False
    (cb,) = sandbox.wait_for_callbacks(1, message_sid=m["sid"], timeout=10)  # ... then failed it
    assert (cb["form"]["MessageStatus"], cb["form"]["ErrorCode"], cb["status"]) == ("failed", "63016", 200)

    (part,) = [x for x in rows(env) if x["direction"] == "out"]
    assert (part["provider_id"], part["status"]) == (m["sid"], "failed")
    assert part["error"] == delivery_error("63016") and OUTSIDE_WINDOW in part["error"]
    assert "24-hour customer service window" in part["error"] and "template" in part["error"]
    time.sleep(0.5)  # long past the retry backoff: a retry would show up now
    assert len(message_posts(sandbox)) == 1  # never sent again
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line and "63016" in line]
    assert len(errors) == 1 and m["sid"] in errors[0] and "24-hour customer service window" in errors[0]

    out = subprocess.run([*SOPHON, "messages", "--json"], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60)
    (shown,) = [x for x in json.loads(out.stdout) if x["direction"] == "out"]
    assert shown["status"] == "failed" and "24-hour customer service window" in shown["error"]


def test_concurrent_duplicate_deliveries_to_two_workers_are_answered_once(sandbox, account, server):
    public, env, log, _ = server()
    validator = RequestValidator(account.auth_token)
    forms = [wa_form(account.sid, f"dup {i}", sender=f"whatsapp:+1555000{i:04d}", sid=f"SM{i:032x}")
             for i in range(4)]
    for i in range(4):
        sandbox.open_window(f"whatsapp:+1555000{i:04d}", WA_SENDER)
    statuses = []

    def deliver(form):
        r = requests.post(public + WEBHOOK, data=form, timeout=15,
                          headers={"X-Twilio-Signature": validator.compute_signature(public + WEBHOOK, form)})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=deliver, args=(form,)) for form in forms for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sandbox.wait_for_messages(4, timeout=20)
    time.sleep(1.0)  # a second answer to any of them would be out by now
    assert statuses == [200] * 24
    said = sorted(m["form"]["Body"].split('You said: "')[1].split('"')[0] for m in sandbox.messages())
    assert said == [f"dup {i}" for i in range(4)]  # each answered exactly once
    assert len(message_posts(sandbox)) == 4
    inbound = [r for r in rows(env) if r["direction"] == "in"]
    assert sorted(r["provider_id"] for r in inbound) == [f["MessageSid"] for f in forms]


def test_sigkill_of_a_worker_loses_nothing(sandbox, account, server):
    senders = [f"whatsapp:+1555001{i:04d}" for i in range(4)]
    channel = wa_channel(account, routing={"agentId": "slow-echo", "dmBehavior": "per-peer"})
    public, env, log, srv = server(
        [channel], SOPHON_PLUGINS=PLUGINS + ",slow_agent", SOPHON_JOB_LEASE="2", SOPHON_PIPELINE_THREADS="2",
        SOPHON_RETRY_BASE="0.1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(SLOW_AGENT_DIST), os.environ.get("PYTHONPATH")])))
    texts = []
    for round_ in range(2):
        for i, sender in enumerate(senders):
            texts.append(f"m{round_}-{i}")
            status, _ = sandbox.send_inbound(from_=sender, to=WA_SENDER, body=texts[-1], url=public + WEBHOOK)
            assert status == 200
    sandbox.wait_for_messages(1, timeout=20)  # processing is under way
    time.sleep(0.3)  # land in the agents' work (0.6 s each), not right after a send
    victim = srv.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert len(sandbox.messages()) < len(texts)  # the kill really interrupted the work

    expected = {f"echo: {t}" for t in texts}
    wait_until(lambda: expected <= {m["form"]["Body"] for m in sandbox.messages()}, timeout=30,
               what="every message to be answered after the kill")
    time.sleep(2.5)  # longer than a lease: a wrongly re-run job would show up now
    got = collections.Counter(m["form"]["Body"] for m in sandbox.messages())
    assert set(got) == expected
    resent = log.read_text().count("may have been sent before a crash; sending it again")
    # a part goes out twice only when it was in flight at the kill, and the log says so
    assert max(got.values()) <= 2 and sum(n - 1 for n in got.values()) <= resent, got
    for sender in senders:  # each sender's replies arrive in the order it wrote
        bodies = list(dict.fromkeys(m["form"]["Body"] for m in sandbox.messages(to=sender)))
        assert bodies == sorted(bodies, key=lambda b: int(b.split("m")[1].split("-")[0]))
    wait_until(lambda: victim not in srv.worker_pids() and len(srv.worker_pids()) == 2, timeout=10,
               what="gunicorn to replace the killed worker")
