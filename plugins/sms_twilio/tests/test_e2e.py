"""End to end: real gunicorn, real sandbox, real HTTP both ways, on loopback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sophon_core.runtime import RELOAD_EVERY
from sophon_core.testing import free_port, gunicorn
from sophon_sms_twilio.webhook import EMPTY_TWIML

from sms_helpers import NUMBER, PEER, WEBHOOK, sms_channel

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[3]
SOPHON = [sys.executable, "-c", "from sophon_core.cli import main; main()"]


def test_signed_webhook_to_gunicorn_gets_200_and_reply_reaches_twilio_api(sandbox, account, sms_env, tmp_path):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    sandbox.add_number(account.sid, "+15005550010", sms_url=public + WEBHOOK)
    env = sms_env([sms_channel(account, number="+15005550010")], SOPHON_PUBLIC_URL=public)
    with gunicorn(env, port=port, workers=2, log=tmp_path / "gunicorn.log"):
        status, body = sandbox.send_inbound(from_=PEER, to="+15005550010", body="hello")
        assert (status, body) == (200, EMPTY_TWIML)
        (m,) = sandbox.wait_for_messages(1, to=PEER, timeout=15)
        # a wrong signature never reaches the agent
        status, _ = sandbox.send_inbound(from_=PEER, to="+15005550010", body="forged", signature="bm9wZQ==")
        assert status == 403
        time.sleep(0.5)
    assert m["form"]["To"] == PEER and m["form"]["From"] == "+15005550010"
    assert m["auth_user"] == account.sid
    assert m["form"]["Body"] == 'Sophon default agent. You said: "hello"'
    posts = [r for r in sandbox.requests() if r["method"] == "POST"]
    assert [r["path"] for r in posts] == [f"/2010-04-01/Accounts/{account.sid}/Messages.json"]
    log = (tmp_path / "gunicorn.log").read_text()
    assert "X-Twilio-Signature does not match" in log
    assert account.auth_token not in log

    # the operator's view of what happened
    cli_env = {**os.environ, **env}
    out = subprocess.run([*SOPHON, "messages", "--json"], env=cli_env, capture_output=True, text=True, timeout=60)
    rows = json.loads(out.stdout)
    assert [(r["direction"], r["peer"], r["status"], r["units"]) for r in reversed(rows)] == [
        ("in", PEER, "received", 1), ("out", PEER, "queued", 1)]
    assert rows[0]["provider_id"] == m["response"]["sid"]
    out = subprocess.run([*SOPHON, "usage", "--json"], env=cli_env, capture_output=True, text=True, timeout=60)
    (day,) = json.loads(out.stdout)
    assert (day["channel"], day["messages_in"], day["messages_out"], day["units_out"]) == ("sms-twilio", 1, 1, 1)
    table = subprocess.run([*SOPHON, "messages"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert "You said" in table.stdout and account.auth_token not in table.stdout + table.stderr + out.stdout


def test_readme_quick_start_demo_and_simulate(tmp_path):
    """`sophon sms demo` (what ./dev serve runs) then `sophon sms simulate "hello"`."""
    web, box = free_port(), free_port()
    env = {**os.environ, "SOPHON_CHANNELS": str(REPO / "channels.json"), "SOPHON_DATA_DIR": str(tmp_path)}
    env.pop("SOPHON_TWILIO_API_URL", None)
    log = open(tmp_path / "demo.log", "wb")
    demo = subprocess.Popen([*SOPHON, "sms", "demo", "--bind", f"127.0.0.1:{web}", "--sandbox-port", str(box)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run([*SOPHON, "sms", "simulate", "hello", "--sandbox-url", f"http://127.0.0.1:{box}",
                                  "--timeout", "10"], env=env, capture_output=True, text=True, timeout=60)
            if out.returncode == 0 or time.monotonic() > deadline or demo.poll() is not None:
                break
            time.sleep(0.5)
        assert out.returncode == 0, (out.stdout, out.stderr, (tmp_path / "demo.log").read_text())
        assert 'You said: "hello"' in out.stdout
        box_url = ["--sandbox-url", f"http://127.0.0.1:{box}"]
        stop = subprocess.run([*SOPHON, "sms", "simulate", "STOP", *box_url], env=env, capture_output=True,
                              text=True, timeout=60)
        assert stop.returncode == 0 and "(no reply expected: opted out" in stop.stdout
        after = subprocess.run([*SOPHON, "sms", "simulate", "anyone?", *box_url, "--timeout", "2"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert after.returncode == 1 and "opted out with STOP?" in after.stderr
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=40)
        log.close()
    assert demo.returncode == 0, (tmp_path / "demo.log").read_text()


def test_invalid_channels_file_refuses_to_start(tmp_path, sandbox, account, sms_env):
    bad = sms_channel(account, number="+1 234")
    bad["config"]["accountSid"] = "AC123"
    env = {**os.environ, **sms_env([bad, {"id": "x", "type": "whatsapp", "config": {}}])}
    out = subprocess.run([*SOPHON, "serve", "--bind", f"127.0.0.1:{free_port()}"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "sms-twilio: config.phoneNumber: '+1 234' is not E.164 (example: +1234567890)" in out.stderr
    assert "sms-twilio: config.accountSid: 'AC123' is not a Twilio Account SID" in out.stderr
    assert "x: type: unknown channel type 'whatsapp'" in out.stderr
    assert account.auth_token not in out.stderr + out.stdout
    # plain gunicorn refuses too (the worker cannot boot)
    with pytest.raises(RuntimeError, match="is not E.164"):
        with gunicorn(sms_env([bad]), workers=1, log=tmp_path / "g.log", timeout=30):
            pass


def test_validate_command(tmp_path, sandbox, account, sms_env):
    env = {**os.environ, **sms_env([sms_channel(account)])}
    ok = subprocess.run([*SOPHON, "validate"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "1 channel(s): sms-twilio (sms, enabled)" in ok.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([sms_channel(account), sms_channel(account, "dup")]))
    out = subprocess.run([*SOPHON, "validate", str(bad)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"dup: config.phoneNumber: {NUMBER} is already used by channel 'sms-twilio'" in out.stderr


def test_repo_channels_json_is_the_sandbox_demo():
    from sophon_sms_twilio.sandbox import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN, DEMO_NUMBER

    (ch,) = [c for c in json.loads((REPO / "channels.json").read_text())["channels"] if c["type"] == "sms"]
    assert ch["config"] == {"accountSid": DEMO_ACCOUNT_SID, "authToken": DEMO_AUTH_TOKEN,
                            "phoneNumber": DEMO_NUMBER}


def test_chunked_webhooks_are_read_and_bounded(sandbox, account, sms_env, tmp_path):
    """Transfer-Encoding: chunked (no Content-Length) through real gunicorn."""
    import http.client
    from urllib.parse import urlencode

    from twilio.request_validator import RequestValidator

    from sms_helpers import inbound_form

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = sms_env([sms_channel(account)], SOPHON_PUBLIC_URL=public)

    def post_chunked(form):
        sig = RequestValidator(account.auth_token).compute_signature(public + WEBHOOK, form)
        body = urlencode(form).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request("POST", WEBHOOK, body=iter([body[:10], body[10:]]), encode_chunked=True,
                     headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig})
        resp = conn.getresponse()
        text = resp.read().decode()
        conn.close()
        return resp.status, text

    with gunicorn(env, port=port, workers=1, log=tmp_path / "g.log"):
        assert post_chunked(inbound_form(account.sid, "chunked hello")) == (200, EMPTY_TWIML)
        sandbox.wait_for_messages(1, to=PEER, timeout=15)
        # 80 KiB: over the 64 KiB limit, small enough to sit in the socket buffers, so the
        # early 413 cannot break the client's pipe mid-upload
        status, text = post_chunked(inbound_form(account.sid, "x" * (80 * 1024)))
        assert status == 413 and "limit" in text


def test_concurrent_duplicate_webhooks_to_two_workers_are_answered_once(sandbox, account, sms_env, tmp_path):
    import threading

    import requests
    from twilio.request_validator import RequestValidator

    from sms_helpers import inbound_form

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = sms_env([sms_channel(account)], SOPHON_PUBLIC_URL=public)
    forms = [inbound_form(account.sid, f"dup {i}", sid=f"SM{i:032x}") for i in range(5)]
    validator = RequestValidator(account.auth_token)
    statuses = []

    def deliver(form):
        r = requests.post(public + WEBHOOK, data=form, timeout=15,
                          headers={"X-Twilio-Signature": validator.compute_signature(public + WEBHOOK, form)})
        statuses.append(r.status_code)

    with gunicorn(env, port=port, workers=2, log=tmp_path / "g.log"):
        threads = [threading.Thread(target=deliver, args=(form,)) for form in forms for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sandbox.wait_for_messages(5, to=PEER, timeout=20)
        time.sleep(1.0)
    assert statuses == [200] * 30
    said = sorted(m["form"]["Body"].split('You said: "')[1].split('"')[0] for m in sandbox.messages(to=PEER))
    assert said == [f"dup {i}" for i in range(5)]  # each answered exactly once


def test_cli_deactivate_and_activate_reach_every_gunicorn_worker(sandbox, account, sms_env, tmp_path):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    sandbox.add_number(account.sid, "+15005550030", sms_url=public + WEBHOOK)
    env = sms_env([sms_channel(account, number="+15005550030")], SOPHON_PUBLIC_URL=public)
    cli_env = {**os.environ, **env}

    def statuses(n=6):  # several requests, so both workers answer some
        return {sandbox.send_inbound(from_=PEER, to="+15005550030", body="hi")[0] for _ in range(n)}

    def settle(expected):
        """Each worker re-reads channels.json at most RELOAD_EVERY after it changed: from
        then on every webhook, whichever worker takes it, answers ``expected``."""
        time.sleep(RELOAD_EVERY + 0.05)
        assert statuses() == {expected}

    with gunicorn(env, port=port, workers=2, log=tmp_path / "g.log"):
        assert statuses() == {200}
        out = subprocess.run([*SOPHON, "channels", "deactivate", "sms-twilio"], env=cli_env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        settle(404)
        subprocess.run([*SOPHON, "channels", "activate", "sms-twilio"], env=cli_env, check=True,
                       capture_output=True, timeout=60)
        settle(200)
