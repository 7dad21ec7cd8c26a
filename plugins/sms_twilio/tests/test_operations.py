"""Operating Sophon: metrics, JSON logs, `sophon send`, secrets at rest, the admin token
and the admin API, with real processes on loopback.

Real gunicorn (2 workers unless said otherwise), the real Twilio sandbox over HTTP,
real `sophon` CLI subprocesses. Nothing is mocked.
"""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import falcon.testing
import pytest
import requests

from sophon_core.runtime import RELOAD_EVERY
from prometheus_client.parser import text_string_to_metric_families
from sms_helpers import NUMBER, PEER, WEBHOOK, inbound_form, post_signed, sms_channel
from sophon_sms_twilio.webhook import EMPTY_TWIML

from sophon_core.app import create_app
from sophon_core.testing import free_port, gunicorn
from sophon_core.textsplit import split_text

pytestmark = pytest.mark.e2e
SOPHON = [sys.executable, "-c", "from sophon_core.cli import main; main()"]
CHANNEL = "sms-twilio"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """The developer's shell must not decide these tests (gunicorn() and the CLI inherit os.environ)."""
    for name in ("SOPHON_ADMIN_TOKEN", "SOPHON_SECRET_KEY", "SOPHON_LOG_FORMAT", "SOPHON_LOG_LEVEL",
                 "PROMETHEUS_MULTIPROC_DIR", "SOPHON_RETRY_BASE"):
        monkeypatch.delenv(name, raising=False)


def sophon(env, *args, input=None, timeout=60):
    return subprocess.run([*SOPHON, *args], env={**os.environ, **env}, input=input, capture_output=True,
                          text=True, timeout=timeout, check=False)


def served_channel(sandbox, sms_env, number, *, token=None, **more):
    """A sandbox account and number whose webhook is a gunicorn on a free loopback port."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    acct = sandbox.add_account(auth_token=token)
    sandbox.add_number(acct.sid, number, sms_url=public + WEBHOOK)
    env = sms_env([sms_channel(acct, number=number)], SOPHON_PUBLIC_URL=public, **more)
    return SimpleNamespace(acct=acct, port=port, public=public, env=env)


def api(base, method, path, token=None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kw.pop("headers", {}))
    return requests.request(method, base + path, headers=headers, timeout=15, **kw)


def scrape(base) -> dict:
    r = requests.get(base + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def pids_logging(log: Path, pattern: str) -> set[int]:
    """The worker pids of the text-format log lines (``[pid] LEVEL logger: message``) matching ``pattern``."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {int(m.group(1)) for m in re.finditer(r"\[(\d+)\] [A-Z]+ [\w.]+: " + pattern, text)}


def wait_until_serving(log: Path, workers: set[int], timeout: float = 30.0) -> None:
    """Until every worker has built its app (its ``serving ...`` log line): `gunicorn()` returns
    once one worker answers /healthz, and webhooks sent while the other still loads all go to
    the first."""
    deadline = time.monotonic() + timeout
    while pids_logging(log, r"serving \d+ channel type") < workers:
        assert time.monotonic() < deadline, f"not every worker of {sorted(workers)} started serving in {timeout} s"
        time.sleep(0.05)


def concurrently(fn, args):
    results = [None] * len(args)

    def run(i):
        try:
            results[i] = fn(args[i])
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertion
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


# --- 1. metrics --------------------------------------------------------------------------


def test_metrics_are_summed_across_two_gunicorn_workers(sandbox, sms_env, tmp_path):
    number = "+15005550041"
    w = served_channel(sandbox, sms_env, number, SOPHON_LOG_LEVEL="DEBUG")
    log = tmp_path / "g.log"

    def body_of(i):  # short, two segments, UCS-2, and one whose reply needs two messages
        return [f"hello {i}", f"long {i} " + "x" * 200, f"café ☕ {i}", "w " * 790 + str(i)][i % 4]

    def sender(i):  # one sender each: the default agent's reply then echoes that message only
        return f"+1555700{i:04d}"

    with gunicorn(w.env, port=w.port, workers=2, log=log) as srv:
        metrics_dir = tmp_path / "data" / "metrics" / str(srv.pid)
        assert metrics_dir.is_dir()
        workers = set(srv.worker_pids())
        assert len(workers) == 2
        wait_until_serving(log, workers)
        acked = r"webhook sms acknowledged"
        sent = 0
        while True:  # batches of 6 concurrent webhooks until both workers answered some
            batch = list(range(sent, sent + 6))
            statuses = concurrently(lambda i: sandbox.send_inbound(from_=sender(i), to=number, body=body_of(i)),
                                    batch)
            assert statuses == [(200, EMPTY_TWIML)] * len(batch)
            sent += len(batch)
            if pids_logging(log, acked) == workers or sent >= 60:
                break
        assert pids_logging(log, acked) == workers, "every webhook went to one worker"
        n = sent
        parts = sum(len(split_text(f'Sophon default agent. You said: "{body_of(i)}"', 1600)) for i in range(n))
        assert parts > n  # some replies are split
        sandbox.wait_for_messages(parts, timeout=30)
        deadline = time.monotonic() + 10  # the counter moves just after Twilio answered
        while True:
            samples = scrape(srv.url)
            if value(samples, "sophon_outbound_messages_total", channel=CHANNEL) >= parts \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        samples = scrape(srv.url)
        msgs = sandbox.messages()
        assert len(msgs) == parts
        segments = sum(int(m["response"]["num_segments"]) for m in msgs)
        assert segments > parts
        assert value(samples, "sophon_inbound_messages_total", channel=CHANNEL, outcome="queued") == n
        assert value(samples, "sophon_outbound_messages_total", channel=CHANNEL) == parts
        assert value(samples, "sophon_outbound_units_total", channel=CHANNEL) == segments
        assert value(samples, "sophon_webhook_seconds_count", type="sms", code="200") == n
        assert value(samples, "sophon_webhook_seconds_count", type="sms", code="403") == 0
        assert value(samples, "sophon_send_failures_total", channel=CHANNEL, kind="temporary") == 0
        # each worker wrote its own histogram file (only webhooks touch the histogram)
        files = {int(m.group(1)) for f in metrics_dir.iterdir() if (m := re.fullmatch(r"histogram_(\d+)\.db", f.name))}
        assert files == workers

        status, _ = sandbox.send_inbound(from_=PEER, to=number, body="forged", signature="bm9wZQ==")
        assert status == 403
        samples = scrape(srv.url)
        assert value(samples, "sophon_webhook_seconds_count", type="sms", code="403") == 1
        assert value(samples, "sophon_webhook_seconds_count", type="sms", code="200") == n
        assert value(samples, "sophon_inbound_messages_total", channel=CHANNEL, outcome="queued") == n
        assert metrics_dir.is_dir()
    assert not metrics_dir.exists(), "the master's metrics folder outlived the server"
    assert (tmp_path / "data" / "metrics").is_dir()


# --- 2. JSON logs ------------------------------------------------------------------------


def test_json_log_format_makes_every_line_a_json_object(sandbox, sms_env, tmp_path):
    number = "+15005550042"
    w = served_channel(sandbox, sms_env, number, SOPHON_LOG_FORMAT="json")
    log = tmp_path / "g.log"
    with gunicorn(w.env, port=w.port, workers=2, log=log):
        assert sandbox.send_inbound(from_=PEER, to=number, body="hello json") == (200, EMPTY_TWIML)
        sandbox.wait_for_messages(1, to=PEER, timeout=15)
        assert sandbox.send_inbound(from_=PEER, to=number, body="forged", signature="bm9wZQ==")[0] == 403
        time.sleep(0.3)
    text = log.read_text()
    assert w.acct.auth_token not in text
    records, not_json = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            not_json.append(line)
            continue
        if isinstance(obj, dict) and {"ts", "level", "logger", "message"} <= set(obj):
            records.append(obj)
        else:
            not_json.append(line)

    def has(logger, words):
        return any(r["logger"] == logger and words in r["message"] for r in records)

    assert has("gunicorn.error", "Booting worker")
    assert has("gunicorn.access", f"POST {WEBHOOK}")
    assert has("gunicorn.error", "Shutting down")
    assert any(r["logger"] == "sophon.app" and "serving" in r["message"] for r in records)
    forged = [r for r in records if r["logger"] == "sophon.webhook" and "rejected with 403" in r["message"]]
    assert forged and forged[0]["level"] == "WARNING" and isinstance(forged[0]["pid"], int)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in records)
    # BUG (sophon_core/gunicorn_conf.py): gunicorn logs "Starting gunicorn <version>" in
    # Arbiter.start() *before* calling the on_starting hook that installs the JSON formatter.
    assert not_json == [], f"{len(not_json)} log line(s) are not JSON objects: {not_json}"


# --- 3. sophon send ----------------------------------------------------------------------


def test_sophon_send_through_the_sandbox(sandbox, account, sms_env, sms_runtime, tmp_path):
    channels = [sms_channel(account)]
    env = sms_env(channels, SOPHON_RETRY_BASE="0.1")

    def posts(to):
        return [r for r in sandbox.requests()
                if r["method"] == "POST" and r["path"].endswith("/Messages.json") and r["form"].get("To") == to]

    # a short text: one message, to the right number, from the channel's number
    out = sophon(env, "send", "--channel", CHANNEL, "--to", PEER, "hello from the operator", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    (m,) = sandbox.messages(to=PEER)
    assert (m["form"]["From"], m["form"]["Body"], m["auth_user"]) == (NUMBER, "hello from the operator", account.sid)
    assert result == {"ok": True, "channel": CHANNEL, "to": PEER,
                      "parts": [{"part": 1, "id": m["sid"], "status": "queued", "units": 1}]}
    assert re.fullmatch(r"SM[0-9a-f]{32}", m["sid"])

    # a long text: several messages, in order, nothing lost
    long_peer = "+15551230002"
    text = " ".join(f"word{i:04d}" for i in range(500))  # 4499 characters
    out = sophon(env, "send", "--channel", CHANNEL, "--to", long_peer, text, "--json")
    assert out.returncode == 0, out.stderr
    parts = json.loads(out.stdout)["parts"]
    msgs = sandbox.messages(to=long_peer)
    assert len(msgs) == len(parts) == 3
    assert [p["part"] for p in parts] == [1, 2, 3]
    assert [p["id"] for p in parts] == [m["sid"] for m in msgs]
    assert all(len(m["form"]["Body"]) <= 1600 for m in msgs)
    assert "".join(m["form"]["Body"] for m in msgs) == text
    assert [p["units"] for p in parts] == [int(m["response"]["num_segments"]) for m in msgs]

    # temporary failures (429, then 500) are retried, then it goes through once
    retry_peer = "+15551230003"
    sandbox.inject(path_suffix="/Messages.json", status=429, code=20429)
    sandbox.inject(path_suffix="/Messages.json", status=500)
    out = sophon(env, "send", "--channel", CHANNEL, "--to", retry_peer, "try again please")
    assert out.returncode == 0, out.stderr
    assert [r["status"] for r in posts(retry_peer)] == [429, 500, 201]
    assert out.stderr.count("trying again in") == 2 and "Queue overflow" in out.stderr
    (m,) = sandbox.messages(to=retry_peer)
    assert out.stdout == f"sent part 1/1 to {retry_peer} via {CHANNEL}: {m['sid']} (queued, 1 unit(s))\n"

    # a permanent failure: one attempt, exit 1, Twilio's own words
    refused_peer = "+15551230004"
    words = "Permission to send an SMS has not been enabled for the region indicated by the 'To' number"
    sandbox.inject(path_suffix="/Messages.json", status=400, code=21408, message=words, times=2)
    out = sophon(env, "send", "--channel", CHANNEL, "--to", refused_peer, "you will not get this", "--json")
    assert out.returncode == 1
    failure = json.loads(out.stdout)
    assert failure["ok"] is False and failure["sent"] == []
    assert words in failure["error"] and "21408" in failure["error"]
    assert [r["status"] for r in posts(refused_peer)] == [400]
    out = sophon(env, "send", "--channel", CHANNEL, "--to", refused_peer, "nor this")  # text mode says it too
    assert out.returncode == 1 and words in out.stderr and "Traceback" not in out.stderr
    assert [r["status"] for r in posts(refused_peer)] == [400, 400]

    # a recipient who texted STOP gets nothing (Sophon refuses before calling Twilio)
    stopped = "+15551230005"
    rt = sms_runtime(channels)
    client = falcon.testing.TestClient(create_app(rt))
    assert post_signed(client, account.auth_token, inbound_form(account.sid, "STOP", sender=stopped)).status_code == 200
    out = sophon(env, "send", "--channel", CHANNEL, "--to", stopped, "are you there?")
    assert out.returncode == 1
    assert "opted out" in out.stderr and "STOP" in out.stderr
    assert posts(stopped) == []

    # a deactivated channel sends nothing and says how to activate it
    assert sophon(env, "channels", "deactivate", CHANNEL).returncode == 0
    before = len(sandbox.requests())
    out = sophon(env, "send", "--channel", CHANNEL, "--to", PEER, "still there?")
    assert out.returncode == 1
    assert f"sophon channels activate {CHANNEL}" in out.stderr
    assert len(sandbox.requests()) == before

    # the operator's record: every accepted part with its Twilio sid, the refusal with its reason
    out = sophon(env, "messages", "--json", "--limit", "100")
    assert out.returncode == 0, out.stderr
    rows = [r for r in json.loads(out.stdout) if r["direction"] == "out"]
    accepted = {r["provider_id"]: r for r in rows if r["status"] != "failed"}
    assert set(accepted) == {m["sid"] for m in sandbox.messages()}
    assert {accepted[m["sid"]]["text"] for m in sandbox.messages()} == {m["form"]["Body"] for m in sandbox.messages()}
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["peer"], r["provider_id"]) for r in failed] == [(refused_peer, None), (refused_peer, None)]
    assert all(words in r["error"] for r in failed)
    assert not any(r["peer"] == stopped for r in rows)


# --- 4. secrets --------------------------------------------------------------------------

CANARY = "CANARY-authtoken-7f3a9c"
CANARY2 = "CANARY-second-token-4d1e"
CANARY3 = "CANARY-patched-token-9b8c"
ADMIN = "ADMIN-CANARY-0a1b2c3d4e5f6a7b8c9d"


def test_secrets_never_leak_through_cli_api_or_logs(sandbox, sms_env, tmp_path):
    n1, n2 = "+15005550043", "+15005550044"
    w = served_channel(sandbox, sms_env, n1, token=CANARY)
    acct2 = sandbox.add_account(auth_token=CANARY2)
    sandbox.add_number(acct2.sid, n2, sms_url=w.public + WEBHOOK)
    channels_path, data = Path(w.env["SOPHON_CHANNELS"]), Path(w.env["SOPHON_DATA_DIR"])
    key_path = data / "secret.key"
    assert CANARY in channels_path.read_text()  # a hand-written file, token in plain text
    secrets_seen = {CANARY, CANARY2, CANARY3, ADMIN}
    outputs = []

    def cli(*args, input=None, code=0, **more):
        out = sophon({**w.env, **more}, *args, input=input)
        outputs.append((args, out))
        assert out.returncode == code, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        return out

    def keys():
        return set(key_path.read_text().split()) if key_path.exists() else set()

    v = json.loads(cli("validate", "--json").stdout)
    assert v["ok"] is True and any(w["path"] == "config.authToken" for w in v["warnings"])
    cli("validate")
    (row,) = json.loads(cli("channels", "list", "--json").stdout)
    assert row["secrets"] == {"authToken": True} and "authToken" not in row["config"]
    cli("channels", "list")
    assert CANARY in channels_path.read_text() and not key_path.exists()  # reading changes nothing

    enc = json.loads(cli("channels", "encrypt", "--json").stdout)
    assert enc == {"ok": True, "encrypted": 1, "key": str(key_path)}
    stored = channels_path.read_text()
    assert "enc:v1:" in stored and CANARY not in stored
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    secrets_seen |= keys()
    assert json.loads(cli("channels", "test", CHANNEL, "--json").stdout)["ok"] is True

    added = json.loads(cli("channels", "add", "sms-two", "--type", "sms", "--set", f"accountSid={acct2.sid}",
                           "--set", f"phoneNumber={n2}", "--dm-behavior", "per-peer", "--json",
                           input=CANARY2 + "\n").stdout)
    assert (added["id"], added["enabled"], added["secrets"]) == ("sms-two", False, {"authToken": True})
    stored = channels_path.read_text()
    assert stored.count("enc:v1:") == 2 and CANARY2 not in stored

    old_keys = keys()
    rotated = json.loads(cli("channels", "rotate-key", "--json").stdout)
    assert rotated == {"ok": True, "reencrypted": 2, "key": str(key_path)}
    assert keys() and keys().isdisjoint(old_keys)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    secrets_seen |= keys()
    after = channels_path.read_text()
    assert after.count("enc:v1:") == 2 and after != stored and CANARY not in after and CANARY2 not in after

    assert json.loads(cli("channels", "deactivate", "sms-two", "--json").stdout)["enabled"] is False
    assert json.loads(cli("channels", "activate", "sms-two", "--json").stdout)["enabled"] is True
    sent = json.loads(cli("send", "--channel", CHANNEL, "--to", PEER, "from the operator", "--json").stdout)
    (m,) = sandbox.messages(to=PEER)
    assert sent["parts"][0]["id"] == m["sid"] and m["auth_user"] == w.acct.sid  # the decrypted token worked
    assert json.loads(cli("channels", "test", "sms-two", "--json").stdout)["ok"] is True

    # a valid key that is not the one: exit 1, the channel and field named, nothing else shown
    wrong = cli("channels", "rotate-key", "--print-new-key").stdout.strip()
    assert wrong not in keys()
    out = cli("validate", code=1, SOPHON_SECRET_KEY=wrong)
    assert f"{CHANNEL}: config.authToken: cannot be decrypted with the key from SOPHON_SECRET_KEY" in out.stderr
    assert "sms-two: config.authToken: cannot be decrypted" in out.stderr
    out = cli("validate", "--json", code=1, SOPHON_SECRET_KEY=wrong)
    errors = json.loads(out.stdout)["errors"]
    assert {(e["channel"], e["path"]) for e in errors} == {(CHANNEL, "config.authToken"), ("sms-two", "config.authToken")}
    out = cli("send", "--channel", CHANNEL, "--to", PEER, "nope", code=1, SOPHON_SECRET_KEY=wrong)
    assert "config.authToken" in out.stderr
    # a malformed key: a clear message
    out = cli("validate", code=1, SOPHON_SECRET_KEY="not-a-fernet-key")
    assert "SOPHON_SECRET_KEY does not hold a valid key" in out.stderr
    assert f"{CHANNEL}: config.authToken" in out.stderr and "rotate-key --print-new-key" in out.stderr
    assert "not-a-fernet-key" not in out.stderr
    assert len(sandbox.messages()) == 1

    for args, out in outputs:
        for secret in secrets_seen:
            assert secret not in out.stdout + out.stderr, (args, secret)

    # the server with the encrypted file
    log = tmp_path / "g.log"
    server_env = {**w.env, "SOPHON_ADMIN_TOKEN": ADMIN, "SOPHON_LOG_LEVEL": "DEBUG"}
    bodies = []
    with gunicorn(server_env, port=w.port, workers=2, log=log) as srv:
        peer2 = "+15551230002"
        assert sandbox.send_inbound(from_=peer2, to=n1, body="hello secret") == (200, EMPTY_TWIML)
        (m,) = sandbox.wait_for_messages(1, to=peer2, timeout=15)
        assert m["auth_user"] == w.acct.sid  # signature checked and reply sent with the decrypted token

        def call(method, path, expect, **kw):
            r = api(srv.url, method, path, ADMIN, **kw)
            bodies.append((method, path, r.text))
            assert r.status_code == expect, (method, path, r.status_code, r.text)
            return r.json() if r.content else None

        listed = call("GET", "/api/channels", 200)
        assert [c["id"] for c in listed["channels"]] == [CHANNEL, "sms-two"]
        assert all(c["secrets"] == {"authToken": True} for c in listed["channels"])
        assert call("GET", f"/api/channels/{CHANNEL}", 200)["config"] == {"accountSid": w.acct.sid, "phoneNumber": n1}
        tested = call("POST", f"/api/channels/{CHANNEL}/test", 200)
        assert tested["ok"] is True, tested
        patched = call("PATCH", "/api/channels/sms-two", 200, json={"name": "Second", "config": {"authToken": CANARY3}})
        assert patched["name"] == "Second" and patched["secrets"] == {"authToken": True}
        stored = channels_path.read_text()
        assert CANARY3 not in stored and stored.count("enc:v1:") == 2
        # the new token is the one in use: the sandbox account still has the old one
        retested = call("POST", "/api/channels/sms-two/test", 200)
        assert retested["ok"] is False and "Authentication error" in json.dumps(retested)

        # error paths: a forged webhook, a change that makes the config invalid
        stored = channels_path.read_text()
        assert sandbox.send_inbound(from_=peer2, to=n1, body="forged", signature="bm9wZQ==")[0] == 403
        rejected = call("PATCH", "/api/channels/sms-two", 422, json={"config": {"phoneNumber": CANARY3}})
        assert rejected["errors"][0]["path"] == "config.phoneNumber"
        rejected = call("PATCH", f"/api/channels/{CHANNEL}", 422, json={"config": {"accountSid": CANARY}})
        assert rejected["errors"][0]["path"] == "config.accountSid"
        assert channels_path.read_text() == stored
        time.sleep(0.3)
    text = log.read_text()
    assert "DEBUG" in text and "X-Twilio-Signature does not match" in text
    for secret in secrets_seen:
        assert secret not in text, f"{secret} is in the gunicorn log"
    # BUG (sophon_core/config.py, _scrub): the 422 problems echo the rejected value, and
    # _scrub only looks for the *stored* (encrypted) secret strings, so a real token typed
    # into a non-secret field (phoneNumber, accountSid) is sent back verbatim.
    for method, path, body in bodies:
        for secret in secrets_seen:
            assert secret not in body, f"{method} {path} answered with {secret}: {body}"


# --- 5. the admin token ------------------------------------------------------------------


def test_admin_token_is_generated_private_and_required(sandbox, sms_env, tmp_path):
    number = "+15005550045"
    w = served_channel(sandbox, sms_env, number)
    token_path = tmp_path / "data" / "admin.token"
    log = tmp_path / "g.log"
    assert not token_path.exists()
    with gunicorn(w.env, port=w.port, workers=2, log=log) as srv:
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        token = token_path.read_text().strip()
        assert len(token) >= 32
        out = sophon(w.env, "admin-token")
        assert (out.returncode, out.stdout) == (0, token + "\n")

        probes = [None, "Bearer wrong-token", "Bearer ", "Bearer", f"Basic {token}", token] * 3  # both workers
        for auth, r in zip(probes, concurrently(
                lambda auth: requests.get(srv.url + "/api/channels", timeout=10,
                                          headers={"Authorization": auth} if auth else {}), probes)):
            assert r.status_code == 401, (auth, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["title"] == "admin token required" and token not in r.text
        r = api(srv.url, "POST", f"/api/channels/{CHANNEL}/deactivate")
        assert r.status_code == 401
        # the token works, on both workers (several concurrent requests)
        answers = concurrently(lambda _: api(srv.url, "GET", "/api/channels", token).status_code, range(8))
        assert answers == [200] * 8
        # public routes stay public
        assert requests.get(srv.url + "/healthz", timeout=10).status_code == 200
        assert sandbox.send_inbound(from_=PEER, to=number, body="no token needed") == (200, EMPTY_TWIML)
        sandbox.wait_for_messages(1, to=PEER, timeout=15)
        time.sleep(0.3)
    text = log.read_text()
    assert "created the admin token in" in text
    assert token not in text
    assert sophon(w.env, "admin-token").stdout == token + "\n"  # stable after a restart


def test_an_empty_admin_token_file_is_not_an_empty_password(sandbox, sms_env, tmp_path):
    """admin.token exists but is empty (a crash between creating and writing it, a worker that
    read it while another was writing it, an operator's `: > admin.token`)."""
    number = "+15005550047"
    w = served_channel(sandbox, sms_env, number)
    token_path = tmp_path / "data" / "admin.token"
    token_path.parent.mkdir(parents=True)
    token_path.write_text("")
    token_path.chmod(0o600)
    try:
        with gunicorn(w.env, port=w.port, workers=1, log=tmp_path / "g.log", timeout=20) as srv:
            answers = {auth: requests.get(srv.url + "/api/channels", headers={"Authorization": auth},
                                          timeout=10).status_code for auth in ("Bearer ", "Bearer")}
    except RuntimeError as exc:  # refusing to start is a fine answer too, when it says why
        assert "admin.token" in str(exc)
        return
    # BUG (sophon_core/admin.py, ensure_token): an empty file yields the token "" and
    # AdminGuard("") lets "Authorization: Bearer " in: full admin access without a token.
    assert answers == {"Bearer ": 401, "Bearer": 401}, f"the admin API opened with an empty token: {answers}"
    out = sophon(w.env, "admin-token")
    assert out.returncode == 1 or out.stdout.strip(), "sophon admin-token printed an empty token"


# --- 6. live config across workers -------------------------------------------------------


def test_admin_api_deactivate_and_activate_reach_every_worker(sandbox, sms_env, tmp_path):
    number = "+15005550046"
    w = served_channel(sandbox, sms_env, number, SOPHON_ADMIN_TOKEN=ADMIN, SOPHON_LOG_LEVEL="DEBUG")
    log = tmp_path / "g.log"

    def batch():
        got = concurrently(lambda i: sandbox.send_inbound(from_=f"+1555800{i:04d}", to=number, body="hi")[0],
                           range(6))
        return set(got)

    def settle(expected, changed):
        """Every worker re-reads channels.json within RELOAD_EVERY of a change (the one that
        served the admin call at once): from then on every webhook answers ``expected``."""
        time.sleep(max(0.0, changed + RELOAD_EVERY + 0.05 - time.monotonic()))
        assert batch() == {expected}

    def from_both_workers(expected, pattern, workers):
        for _ in range(8):  # more batches until the log shows both workers answering
            if pids_logging(log, pattern) >= workers:
                return
            assert batch() == {expected}
        assert pids_logging(log, pattern) >= workers, "one worker never answered"

    with gunicorn(w.env, port=w.port, workers=2, log=log) as srv:
        workers = set(srv.worker_pids())
        assert len(workers) == 2
        wait_until_serving(log, workers)
        assert batch() == {200}
        r = api(srv.url, "POST", f"/api/channels/{CHANNEL}/deactivate", ADMIN)
        assert r.status_code == 200 and (r.json()["enabled"], r.json()["status"]) == (False, "disabled")
        settle(404, time.monotonic())
        from_both_workers(404, r"POST \S+ rejected with 404", workers)
        assert api(srv.url, "GET", f"/api/channels/{CHANNEL}", ADMIN).json()["enabled"] is False
        r = api(srv.url, "POST", f"/api/channels/{CHANNEL}/activate", ADMIN)
        assert r.status_code == 200 and r.json()["enabled"] is True
        mark = log.stat().st_size
        settle(200, time.monotonic())
        acked = log.read_text(errors="replace")[mark:]
        for _ in range(8):
            pids = {int(p) for p in re.findall(r"\[(\d+)\] DEBUG sophon\.webhook: webhook sms acknowledged", acked)}
            if pids >= workers:
                break
            assert batch() == {200}
            acked = log.read_text(errors="replace")[mark:]
        assert pids >= workers, "one worker never answered after activation"
