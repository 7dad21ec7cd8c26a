"""`sophon serve` with its reply sender: real gunicorn, real sender process, real sandbox, on loopback.

Processes are found through /proc: the serve process's children are the gunicorn master
and (``--replies sender``) the ``sophon_core.sender`` process; the workers are the
master's children. Every wait has a deadline; every process group is killed in the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sophon_core import sender
from sophon_core.testing import free_port
from sophon_sms_twilio.webhook import EMPTY_TWIML

from sms_helpers import PEER, WEBHOOK, sms_channel

pytestmark = pytest.mark.e2e
SOPHON = [sys.executable, "-c", "from sophon_core.cli import main; main()"]
DIST = Path(__file__).parent / "slow_agent_dist"  # agent "slow-echo": 0.6 s per reply, "echo: <text>"
NUMBER = "+15005550040"


# --- /proc ---------------------------------------------------------------------------------

def policies(pid: int) -> set[int]:
    """The scheduling policies of ``pid``'s threads."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def thread_nices(pid: int) -> set[int]:
    """The nice values of ``pid``'s threads."""
    return {int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])
            for tid in os.listdir(f"/proc/{pid}/task")}


def stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, process group, nice) of ``pid``, None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[16])


def alive(pid: int) -> bool:
    st = stat(pid)
    return st is not None and st[0] not in ("Z", "X")  # (a zombie nobody reaped yet is gone)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pids_where(check: Callable[[tuple[str, int, int, int]], bool]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = stat(int(entry.name))
            if st is not None and st[0] not in ("Z", "X") and check(st):
                found.append(int(entry.name))
    return sorted(found)


def children(pid: int) -> list[int]:
    return pids_where(lambda st: st[1] == pid)


def group(pgid: int) -> list[int]:
    return pids_where(lambda st: st[2] == pgid)


def is_sender(pid: int) -> bool:
    argv = cmdline(pid)
    return "-m" in argv and "sophon_core.sender" in argv


def is_gunicorn(pid: int) -> bool:
    argv = cmdline(pid)
    return "-m" in argv and "gunicorn" in argv


def wait_until(check: Callable[[], object], timeout: float, what: str | Callable[[], str]):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.05)


# --- the server ----------------------------------------------------------------------------

@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path
    data: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                return json.loads(r.read()) if r.status == 200 else None
        except OSError:
            return None

    def sender_pids(self) -> list[int]:
        return [p for p in children(self.pid) if is_sender(p)]

    def master(self) -> int:
        (master,) = [p for p in children(self.pid) if is_gunicorn(p)]
        return master

    def workers(self) -> list[int]:
        return children(self.master())


@contextlib.contextmanager
def serve(sms_env, sandbox, account, *args: str, slow: bool = False, workers: int = 2,
          ready: Callable[[dict], bool] = lambda h: h.get("reply_sender") == "running",
          timeout: float = 30.0, **more: str) -> Iterator[Served]:
    """``sophon serve --bind 127.0.0.1:<port> --workers N ARGS`` in a session of its own; waits
    until /healthz passes ``ready``; kills the whole session at the end, whatever happened."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    sandbox.add_number(account.sid, NUMBER, sms_url=public + WEBHOOK)
    if slow:
        channel = sms_channel(account, number=NUMBER, routing={"agentId": "slow-echo", "dmBehavior": "per-peer"})
        more = {"SOPHON_PLUGINS": "sms_twilio,default_agent,slow_agent",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(DIST), os.environ.get("PYTHONPATH")])), **more}
    else:
        channel = sms_channel(account, number=NUMBER)
    env = {**os.environ, **sms_env([channel], SOPHON_PUBLIC_URL=public, **more)}
    log = Path(env["SOPHON_DATA_DIR"]).parent / "serve.log"
    out = log.open("ab")
    proc = subprocess.Popen([*SOPHON, "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), *args],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(proc, public, log, Path(env["SOPHON_DATA_DIR"]))
    try:
        def up():
            assert proc.poll() is None, f"sophon serve exited with {proc.returncode}:\n{served.text()[-4000:]}"
            health = served.health()
            return health is not None and ready(health)

        wait_until(up, timeout, lambda: f"/healthz: {served.health()}\n{served.text()[-4000:]}")
        yield served
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        # the session's other processes (PR_SET_PDEATHSIG, orphans) die with the SIGKILL too
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not group(proc.pid), 10, "")
        out.close()
    assert account.auth_token not in served.text()


def reply_and_owners(served: Served, sandbox, n: int, timeout: float = 20.0, to: str | None = PEER
                     ) -> tuple[list[dict], set[int]]:
    """Wait for ``n`` messages to ``to`` (None: to anyone); meanwhile note which processes hold the running jobs'
    leases (``jobs.lease_owner`` is ``<pid>-<random>`` while a runner works on a job)."""
    owners: set[int] = set()
    deadline = time.monotonic() + timeout
    db = sqlite3.connect(served.data / "sophon.db", timeout=5)
    try:
        while True:
            try:
                rows = db.execute("SELECT lease_owner FROM jobs WHERE state = 'running'"
                                  " AND lease_owner IS NOT NULL").fetchall()
            except sqlite3.OperationalError:  # (busy for longer than 5 s: try again)
                rows = []
            owners |= {int(owner.split("-", 1)[0]) for (owner,) in rows}
            got = sandbox.messages(to=to)
            if len(got) >= n:
                return got, owners
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} of {n} replies within {timeout} s:\n{served.text()[-4000:]}")
            time.sleep(0.01)
    finally:
        db.close()


def jobs(served: Served) -> list[tuple[str, int]]:
    db = sqlite3.connect(served.data / "sophon.db", timeout=5)
    try:
        return db.execute("SELECT state, attempts FROM jobs ORDER BY id").fetchall()
    finally:
        db.close()


# --- tests ---------------------------------------------------------------------------------

def test_serve_answers_from_the_reply_sender_not_the_workers(sandbox, account, sms_env):
    with serve(sms_env, sandbox, account, slow=True, SOPHON_LOG_LEVEL="DEBUG") as served:
        health = served.health()
        assert health["replies"] == "sender" and health["reply_sender"] == "running"
        kids = children(served.pid)
        (sender_pid,) = served.sender_pids()
        master = served.master()
        assert sorted(kids) == sorted([sender_pid, master])  # nothing else
        workers = wait_until(lambda: len(served.workers()) == 2 and served.workers(), 20, "2 gunicorn workers")
        assert sender_pid not in workers
        # the sender runs at a lower CPU priority (SOPHON_SENDER_NICE, default +19), every thread of it
        assert sender.DEFAULT_NICE == "19"
        assert stat(sender_pid)[3] == min(19, stat(served.pid)[3] + 19)
        wait_until(lambda: len(os.listdir(f"/proc/{sender_pid}/task")) > 4, 20, "the sender's runner threads")
        assert thread_nices(sender_pid) == {stat(sender_pid)[3]}
        assert policies(sender_pid) == policies(master) == {os.SCHED_OTHER}
        assert stat(master)[3] == stat(served.pid)[3]

        status, body = sandbox.send_inbound(from_=PEER, to=NUMBER, body="hello")
        assert (status, body) == (200, EMPTY_TWIML)
        (m,), owners = reply_and_owners(served, sandbox, 1)
        assert m["form"]["Body"] == "echo: hello" and m["form"]["From"] == NUMBER
        assert owners == {sender_pid}, f"leases held by {owners}; sender {sender_pid}, workers {workers}"
        assert served.sender_pids() == [sender_pid]  # still the same one
        wait_until(lambda: jobs(served) == [("done", 1)], 10, lambda: f"jobs: {jobs(served)}")
        # a burst from several people at once: still only the sender answers
        peers = [f"+1555123{i:04d}" for i in range(2, 6)]
        for peer in peers:
            assert sandbox.send_inbound(from_=peer, to=NUMBER, body=f"from {peer}")[0] == 200
        got, owners = reply_and_owners(served, sandbox, 1 + len(peers), to=None)
        assert sorted(x["form"]["Body"] for x in got) == sorted(["echo: hello", *(f"echo: from {p}" for p in peers)])
        assert owners == {sender_pid}, f"leases held by {owners}; sender {sender_pid}, workers {workers}"
        # /metrics (served by a worker) adds up the sender's counters too: they share one multiprocess folder
        def scrape() -> str:
            with urllib.request.urlopen(f"{served.url}/metrics", timeout=5) as r:
                return r.read().decode()

        # (the counter goes up just after the sandbox took the reply)
        wait_until(lambda: 'sophon_outbound_messages_total{channel="sms-twilio"} 5.0' in scrape(), 10,
                   lambda: scrape()[-3000:])
        assert 'sophon_inbound_messages_total{channel="sms-twilio",outcome="queued"} 5.0' in scrape()
        metrics_dirs = list((served.data / "metrics").iterdir())
        assert [d.name for d in metrics_dirs] == [str(served.pid)]  # named after `sophon serve`
    log = served.text()
    assert "reply sender up" in log
    assert '"GET /healthz HTTP/1.1" 200' in log  # gunicorn's access log, on by default


def test_a_killed_sender_is_started_again_and_answers(sandbox, account, sms_env):
    with serve(sms_env, sandbox, account, slow=True) as served:
        (first,) = served.sender_pids()
        # (/healthz says "running" once the lock is taken; the runners start a little later)
        wait_until(lambda: "reply sender up" in served.text(), 20, "the sender's start")
        os.kill(first, signal.SIGKILL)
        status, body = sandbox.send_inbound(from_=PEER, to=NUMBER, body="while down")
        assert (status, body) == (200, EMPTY_TWIML)  # the webhook only stores: no sender needed
        wait_until(lambda: not alive(first), 10, f"the killed sender {first} is still there")
        second = wait_until(lambda: [p for p in served.sender_pids() if p != first], 20,
                            lambda: f"no new sender:\n{served.text()[-3000:]}")
        assert len(second) == 1
        (m,), owners = reply_and_owners(served, sandbox, 1)
        assert m["form"]["Body"] == "echo: while down"
        assert owners == set(second), f"leases held by {owners}; new sender {second}"
        wait_until(lambda: (served.health() or {}).get("reply_sender") == "running", 10, "healthz: running")
        # and it goes on answering
        assert sandbox.send_inbound(from_=PEER, to=NUMBER, body="again")[0] == 200
        got, _ = reply_and_owners(served, sandbox, 2)
        assert [x["form"]["Body"] for x in got] == ["echo: while down", "echo: again"]
        assert served.proc.poll() is None
    log = served.text()
    assert f"the reply sender exited with {-signal.SIGKILL}; starting it again" in log, log[-3000:]
    assert log.count("reply sender up") == 2


def test_sigterm_to_serve_stops_every_process_of_the_group(sandbox, account, sms_env):
    with serve(sms_env, sandbox, account) as served:
        (sender_pid,) = served.sender_pids()
        master = served.master()
        workers = wait_until(lambda: len(served.workers()) == 2 and served.workers(), 20, "2 gunicorn workers")
        assert sandbox.send_inbound(from_=PEER, to=NUMBER, body="before the stop")[0] == 200
        sandbox.wait_for_messages(1, to=PEER, timeout=20)
        everyone = {served.pid, master, sender_pid, *workers}
        assert everyone <= set(group(served.pid))
        started = time.monotonic()
        os.kill(served.pid, signal.SIGTERM)  # the serve process only; it forwards
        assert served.proc.wait(timeout=30) == 0
        took = time.monotonic() - started
        # serve waited for gunicorn and the sender, gunicorn for its workers: nothing is left
        assert group(served.pid) == [], [(p, cmdline(p)) for p in group(served.pid)]
        assert [p for p in everyone if alive(p)] == []
        assert not (served.data / "metrics" / str(served.pid)).exists()  # its metrics folder went with it
    assert took < 30
    log = served.text()
    assert "reply sender stopped" in log  # a graceful stop, not a kill
    assert "starting it again" not in log


def test_sigkill_to_serve_takes_the_sender_and_gunicorn_along(sandbox, account, sms_env):
    with serve(sms_env, sandbox, account) as served:
        (sender_pid,) = served.sender_pids()
        master = served.master()
        workers = wait_until(lambda: len(served.workers()) == 2 and served.workers(), 20, "2 gunicorn workers")
        os.kill(served.pid, signal.SIGKILL)  # the serve process only: nobody forwards anything
        served.proc.wait(timeout=10)
        orphans = {master, sender_pid, *workers}
        # PR_SET_PDEATHSIG: the kernel sends them SIGTERM; they stop by themselves
        wait_until(lambda: not [p for p in orphans if alive(p)], 30,
                   lambda: f"still running: {[(p, cmdline(p)) for p in orphans if alive(p)]}")
        assert not group(served.pid)
    assert "reply sender stopped" in served.text()


def test_replies_from_workers_has_no_sender(sandbox, account, sms_env):
    with serve(sms_env, sandbox, account, "--replies", "workers", "--no-access-log", slow=True,
               ready=lambda h: h.get("replies") == "workers") as served:
        health = served.health()
        assert health["replies"] == "workers" and "reply_sender" not in health
        assert served.sender_pids() == []
        assert [p for p in group(served.pid) if is_sender(p)] == []
        assert children(served.pid) == [served.master()]
        workers = wait_until(lambda: len(served.workers()) == 2 and served.workers(), 20, "2 gunicorn workers")
        status, body = sandbox.send_inbound(from_=PEER, to=NUMBER, body="no sender")
        assert (status, body) == (200, EMPTY_TWIML)
        (m,), owners = reply_and_owners(served, sandbox, 1)
        assert m["form"]["Body"] == "echo: no sender"
        assert owners and owners <= set(workers), f"leases held by {owners}; workers {workers}"
        assert not sender.running(served.data)
    log = served.text()
    assert "replies from runner threads in the workers" in log
    assert "reply sender" not in log  # (nor the workers' "no reply sender is running" warning)
    assert "GET /healthz HTTP/1.1" not in log  # --no-access-log


def test_auth_token_never_in_the_serve_log(sandbox, account, sms_env):
    """Also through a provider error and a restarted sender (whose own log lines are redacted too)."""
    with serve(sms_env, sandbox, account, SOPHON_LOG_LEVEL="DEBUG", SOPHON_RETRY_BASE="0.1") as served:
        sandbox.inject(status=500, times=1)
        assert sandbox.send_inbound(from_=PEER, to=NUMBER, body="token?")[0] == 200
        sandbox.wait_for_messages(1, to=PEER, timeout=20)
        (first,) = served.sender_pids()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: [p for p in served.sender_pids() if p != first], 20, "no new sender")
        wait_until(lambda: served.text().count("reply sender up") == 2, 20, "the new sender's start")
        # a forged webhook is logged with the reason, never with the token
        assert sandbox.send_inbound(from_=PEER, to=NUMBER, body="x", signature="bm9wZQ==")[0] == 403
        wait_until(lambda: "X-Twilio-Signature does not match" in served.text(), 10, "the rejection's log line")
    log = served.text()
    assert account.auth_token not in log
    assert account.sid in log or "sms-twilio" in log  # (the log is not empty of the channel)
