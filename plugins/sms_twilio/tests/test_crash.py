"""Crash safety: SIGKILL a gunicorn worker, or the whole server, while messages are processed.

After the restart every acknowledged message is answered. A part is sent twice
only in the one window that cannot be closed (killed after Twilio accepted it,
before its id was recorded), and then the pipeline says so in its log.
"""
from __future__ import annotations

import collections
import fcntl
import os
import sqlite3
import signal
import time
from pathlib import Path

import pytest

from sophon_core.journal import read_records
from sophon_core.testing import free_port, gunicorn

from sms_helpers import WEBHOOK, sms_channel

pytestmark = pytest.mark.e2e
DIST = Path(__file__).parent / "slow_agent_dist"
SENDERS = [f"+1555000{i:04d}" for i in range(6)]
RESENT = "may have been sent before a crash; sending it again"


@pytest.fixture
def crash_env(sandbox, account, sms_env, tmp_path):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    sandbox.add_number(account.sid, "+15005550020", sms_url=public + WEBHOOK)
    channel = sms_channel(account, number="+15005550020",
                          routing={"agentId": "slow-echo", "dmBehavior": "per-peer"})
    env = sms_env([channel], SOPHON_PUBLIC_URL=public, SOPHON_PLUGINS="sms_twilio,default_agent,slow_agent",
                  SOPHON_JOB_LEASE="2", SOPHON_PIPELINE_THREADS="2", SOPHON_RETRY_BASE="0.1",
                  PYTHONPATH=os.pathsep.join(filter(None, [str(DIST), os.environ.get("PYTHONPATH")])))
    return port, env, tmp_path / "gunicorn.log"


def send_all(sandbox, n_per_sender):
    texts = []
    for round_ in range(n_per_sender):
        for i, sender in enumerate(SENDERS):
            text = f"m{round_}-{i}"
            status, _ = sandbox.send_inbound(from_=sender, to="+15005550020", body=text)
            assert status == 200
            texts.append(text)
    return texts


def check_answers(sandbox, texts, log: Path, timeout=60):
    expected = {f"echo: {t}" for t in texts}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = collections.Counter(m["form"]["Body"] for m in sandbox.messages())
        if expected <= set(got):
            break
        time.sleep(0.2)
    time.sleep(3)  # longer than a lease: a wrongly re-run job would show up now
    got = collections.Counter(m["form"]["Body"] for m in sandbox.messages())
    assert set(got) == expected, f"missing: {expected - set(got)}"
    twice = sum(n - 1 for n in got.values())
    # a part goes out twice only when it was in flight at the kill, and the log says so
    assert max(got.values()) <= 2 and twice <= log.read_text().count(RESENT), got
    # each sender's replies arrive in the order it wrote
    for i, sender in enumerate(SENDERS):
        bodies = [m["form"]["Body"] for m in sandbox.messages(to=sender)]
        assert list(dict.fromkeys(bodies)) == sorted(set(bodies), key=lambda b: int(b.split("m")[1].split("-")[0]))


def test_sigkill_of_a_worker_loses_nothing(sandbox, crash_env):
    port, env, log = crash_env
    with gunicorn(env, port=port, workers=2, log=log) as server:
        texts = send_all(sandbox, 3)
        sandbox.wait_for_messages(2, timeout=20)  # processing is under way
        time.sleep(0.3)  # land in the agents' work, not right after a send
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        check_answers(sandbox, texts, log)
        deadline = time.monotonic() + 10  # gunicorn reaps the dead worker and starts another
        while time.monotonic() < deadline and (victim in server.worker_pids() or len(server.worker_pids()) != 2):
            time.sleep(0.2)
        assert victim not in server.worker_pids() and len(server.worker_pids()) == 2


def test_sigkill_of_the_whole_server_then_restart_loses_nothing(sandbox, crash_env):
    port, env, log = crash_env
    with gunicorn(env, port=port, workers=2, log=log) as server:
        texts = send_all(sandbox, 3)
        sandbox.wait_for_messages(2, timeout=20)
        time.sleep(0.3)
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    answered_before_restart = len(sandbox.messages())
    assert answered_before_restart < len(texts)  # the kill really interrupted the work
    with gunicorn(env, port=port, workers=2, log=log):
        check_answers(sandbox, texts, log)


def test_sigkill_of_a_worker_whose_journal_was_not_moved_yet_loses_nothing(sandbox, crash_env):
    """The webhooks are acknowledged from the worker's journal while the store's write lock
    is held elsewhere (nothing can be moved); the worker is killed; the next worker moves the
    dead one's journal once the lock is free: each message stored once and answered once."""
    port, env, log = crash_env
    data = Path(env["SOPHON_DATA_DIR"])
    with gunicorn(env, port=port, workers=1, log=log) as server:
        lock = os.open(data / "sophon.db-writelock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # (the store's write lock: see Store._locked)
            texts = send_all(sandbox, 2)  # each answered 200 while nothing can reach the store
            (journal,) = (data / "journal").glob("*.log")
            assert sorted(r["m"]["text"] for _, r in read_records(journal).records) == sorted(texts)
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (victim in server.worker_pids() or not server.worker_pids()):
                time.sleep(0.1)
            assert server.worker_pids() and victim not in server.worker_pids()
            assert sandbox.messages() == []  # nothing was stored, so nothing answered
        finally:
            os.close(lock)  # (releases it)
        check_answers(sandbox, texts, log)
        got = collections.Counter(m["form"]["Body"] for m in sandbox.messages())
        assert set(got.values()) == {1}  # no part was in flight at the kill: each reply once
        with sqlite3.connect(data / "sophon.db") as db:
            rows = db.execute("SELECT text, COUNT(*) FROM messages WHERE direction = 'in' GROUP BY text").fetchall()
        assert dict(rows) == {t: 1 for t in texts}
        assert not journal.exists()
        assert f"moved {len(texts)} message(s) from {journal.name}" in log.read_text()
