"""The reply sender (sophon_core/sender.py) and the pipeline's sender mode (SOPHON_REPLIES=sender).

Real child processes hold the lock and run ``python -m sophon_core.sender``; every
wait has a deadline.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dummy_channel import dummy_channel, wait_sent
from store_spies import run_threads, spy_batches
from sophon_core import pipeline as pipeline_mod
from sophon_core import sender
from sophon_core.models import InboundMessage
from sophon_core.settings import Settings

# A child that takes an exclusive flock on argv[1], says "locked", and holds it until its stdin closes.
HOLDER = ("import fcntl, os, sys\n"
          "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "print('locked', flush=True)\n"
          "sys.stdin.read()\n")


def runner_threads(before=()):
    """Runner threads that were not in ``before`` (threads of earlier runtimes may linger)."""
    old = {id(t) for t in before}
    return [t for t in threading.enumerate() if t.name.startswith("sophon-runner-") and id(t) not in old]


class Holder:
    """A real process holding ``path``'s flock until ``release()``."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "locked":
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"the lock holder did not take the lock (said {line!r})")

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


@pytest.fixture
def wake_socket():
    """Bind a datagram socket at a data folder's wake-up address (what the sender listens on)."""
    socks = []

    def bind(data_dir: Path) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(sender.wake_address(data_dir))
        socks.append(s)
        return s

    yield bind
    for s in socks:
        s.close()


# --- running() --------------------------------------------------------------------------

def test_running_follows_a_real_process_holding_the_lock(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lock = data / sender.LOCK_NAME
    assert sender.LOCK_NAME == "sender.lock"
    assert sender.running(data) is False  # no lock file
    assert not lock.exists()  # ... and asking made none
    lock.touch()
    assert sender.running(data) is False  # a file nobody holds
    holder = Holder(lock)
    try:
        assert sender.running(data) is True
        assert sender.running(data) is True  # asking does not disturb the holder
        assert holder.proc.poll() is None
    finally:
        holder.release()
    assert holder.proc.returncode == 0
    assert sender.running(data) is False  # the holder is gone, its lock with it
    assert sender.running(tmp_path / "elsewhere") is False  # (another folder: never locked)


# --- wake-ups -----------------------------------------------------------------------------

def test_notify_delivers_a_datagram_to_the_wake_address(tmp_path, wake_socket):
    data = tmp_path / "data"
    listener = wake_socket(data)
    listener.settimeout(5)
    sender.notify(data)
    assert listener.recv(16) == b"!"
    sender.notify(data)
    sender.notify(data)
    assert listener.recv(16) == b"!" and listener.recv(16) == b"!"


def test_notify_never_raises_or_blocks(tmp_path, wake_socket):
    assert sender.notify(tmp_path / "nobody-listens") is None  # nothing bound there
    full = tmp_path / "full"
    wake_socket(full)  # bound, never read: its queue fills up
    done = threading.Event()

    def flood():
        for _ in range(2000):
            sender.notify(full)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(10), "notify blocked on a full wake-up queue"


def test_wake_address_is_one_per_data_folder(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = sender.wake_address(tmp_path / "a"), sender.wake_address(tmp_path / "b")
    assert a.startswith("\0")  # abstract: no file to clean up
    assert a != b
    assert sender.wake_address(tmp_path / "c") not in (a, b)  # (a folder that does not exist yet too)
    monkeypatch.chdir(tmp_path)
    # a name no other test used (wake_address caches its answers)
    rel = f"spelled-{tmp_path.name}"
    (tmp_path / rel).mkdir()
    (tmp_path / "x").mkdir()
    absolute = sender.wake_address(tmp_path / rel)
    assert sender.wake_address(Path(rel)) == absolute
    assert sender.wake_address(Path(".") / "x" / ".." / rel) == absolute
    assert sender.wake_address(tmp_path / "x" / ".." / rel) == absolute
    assert sender.wake_address(Path(str(tmp_path / rel) + "/")) == absolute


def test_notify_with_another_spelling_reaches_the_same_listener(tmp_path, monkeypatch, wake_socket):
    data = tmp_path / f"other-{tmp_path.name}"
    data.mkdir()
    listener = wake_socket(data)
    listener.settimeout(5)
    monkeypatch.chdir(tmp_path / "..")
    sender.notify(Path(tmp_path.name) / "." / data.name)
    assert listener.recv(16) == b"!"


# --- the pipeline in sender mode -------------------------------------------------------------

def job_states_become(store, expected: dict, timeout: float = 10.0) -> dict:
    """The store's job states once they equal ``expected``, or as they are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while store.job_states() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return store.job_states()


def message(mid="m1", text="hello"):
    return InboundMessage("d1", mid, "dummy:alice", "dummy:bob", text)


@pytest.fixture
def no_cpu_reports(monkeypatch):
    """Webhook workers' wake-ups without a CPU share in them (it comes once per LOAD_WINDOW)."""
    monkeypatch.setattr(sender, "LOAD_WINDOW", 1e9)


def test_sender_mode_pipeline_stores_wakes_and_runs_no_runner_threads(make_runtime, sent, wake_socket, caplog,
                                                                      no_cpu_reports):
    before = threading.enumerate()
    # (the webhook's own group commit; through the journal: the next test)
    rt = make_runtime([dummy_channel()], env={"SOPHON_REPLIES": "sender", "SOPHON_ACK_JOURNAL": "off"})
    assert rt.settings.replies == "sender"
    listener = wake_socket(rt.settings.data_dir)
    listener.setblocking(False)
    rt.pipeline.start()
    rt.pipeline.start()
    # no runner threads, only one that checkpoints the store (Pipeline._checkpointer)
    assert runner_threads(before) == [] and [t.name for t in rt.pipeline._threads] == ["sophon-checkpoint"]
    with caplog.at_level(logging.WARNING, logger="sophon.pipeline"):
        assert rt.pipeline.accept("dummy", [message()]) == 1
    # the wake-up was sent within accept (Unix datagrams are delivered by sendto itself)
    assert listener.recv(16) == b"!"
    assert "no reply sender is running" in caplog.text  # (none holds the lock here)
    assert runner_threads(before) == [] and [t.name for t in rt.pipeline._threads] == ["sophon-checkpoint"]
    assert rt.store.job_states() == {"queued": 1}
    # a duplicate is not queued again and wakes nobody
    assert rt.pipeline.accept("dummy", [message()]) == 0
    with pytest.raises(BlockingIOError):
        listener.recv(16)
    assert rt.store.job_states() == {"queued": 1}
    assert sent == []
    # what the reply sender does: a pipeline with runner threads, on the same store
    worker = make_runtime([dummy_channel()], env={"SOPHON_REPLIES": "workers"})
    worker.pipeline.start()
    (reply,) = wait_sent(1)
    assert reply == ("d1", "dummy:alice", 'Sophon default agent. You said: "hello"')
    assert job_states_become(rt.store, {"done": 1}) == {"done": 1}


def test_sender_mode_with_the_journal_wakes_the_sender_once_its_move_is_committed(make_runtime, wake_socket,
                                                                                   no_cpu_reports):
    before = threading.enumerate()
    rt = make_runtime([dummy_channel()], env={"SOPHON_REPLIES": "sender"})
    listener = wake_socket(rt.settings.data_dir)
    listener.settimeout(5)
    rt.pipeline.start()
    assert runner_threads(before) == []
    assert [t.name for t in rt.pipeline._threads] == ["sophon-checkpoint", "sophon-journal"]
    assert rt.pipeline.accept("dummy", [message("j1"), message("j2")]) == 2  # journaled
    assert listener.recv(16) == b"!"  # sent by the mover, once the two jobs are committed and synced
    assert rt.store.job_states() == {"queued": 2}
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):  # one wake-up for the batch
        listener.recv(16)
    rt.pipeline.accept("dummy", [message("j1")])  # a duplicate wakes nobody
    rt.pipeline.settle()
    with pytest.raises(BlockingIOError):
        listener.recv(16)
    assert rt.store.job_states() == {"queued": 2}


def test_sender_mode_says_nothing_when_a_sender_holds_the_lock(make_runtime, wake_socket, caplog, tmp_path,
                                                               no_cpu_reports):
    rt = make_runtime([dummy_channel()], env={"SOPHON_REPLIES": "sender", "SOPHON_ACK_JOURNAL": "off"})
    listener = wake_socket(rt.settings.data_dir)
    listener.settimeout(5)
    with Holder(rt.settings.data_dir / sender.LOCK_NAME):
        with caplog.at_level(logging.WARNING, logger="sophon.pipeline"):
            assert rt.pipeline.accept("dummy", [message("m2")]) == 1
    assert listener.recv(16) == b"!"
    assert "no reply sender is running" not in caplog.text


def test_sender_mode_wakes_the_sender_once_per_group_commit_after_its_jobs_are_committed(
        make_runtime, wake_socket, monkeypatch, no_cpu_reports):
    """Concurrent webhooks of one worker are stored in batches (Store._lead): each batch that
    queued a job sends one wake-up, and only once its jobs can be claimed (read here, on a
    connection of our own, the moment the datagram is sent)."""
    import sqlite3


    rt = make_runtime([dummy_channel()], env={"SOPHON_REPLIES": "sender", "SOPHON_ACK_JOURNAL": "off"})
    listener = wake_socket(rt.settings.data_dir)
    listener.settimeout(5)
    batches = spy_batches(rt.store, monkeypatch, delay=0.02)  # accepts pile up behind each commit
    seen: list[set[int]] = []  # the jobs visible at each wake-up
    real_notify = sender.notify

    def notify(data_dir, cpu_share=None):
        db = sqlite3.connect(rt.store.path)
        try:
            seen.append({row[0] for row in db.execute("SELECT inbound_id FROM jobs")})
        finally:
            db.close()
        real_notify(data_dir, cpu_share)

    monkeypatch.setattr(pipeline_mod.sender, "notify", notify)
    n = 24
    results = run_threads([lambda i=i: rt.pipeline.accept("dummy", [message(f"w{i}")]) for i in range(n)])
    assert [r for r in results.values()] == [("ok", 1)] * n
    assert len(batches) < n  # some were committed together
    assert len(seen) == len(batches)  # one wake-up per batch
    assert [listener.recv(16) for _ in seen] == [b"!"] * len(seen)
    jobs = {row[0] for row in sqlite3.connect(rt.store.path).execute("SELECT inbound_id FROM jobs")}
    assert len(jobs) == n and set().union(*seen) == jobs  # every job was committed before a wake-up
    # a batch that queued nothing (duplicates) wakes nobody
    wakes = len(seen)
    again = run_threads([lambda i=i: rt.pipeline.accept("dummy", [message(f"w{i}")]) for i in range(4)])
    assert [r for r in again.values()] == [("ok", 0)] * 4
    assert len(seen) == wakes
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.recv(16)


def test_workers_mode_starts_runner_threads_and_sends_no_wake_up(make_runtime, sent, wake_socket):
    before = threading.enumerate()
    rt = make_runtime([dummy_channel()])
    assert rt.settings.replies == "workers"
    listener = wake_socket(rt.settings.data_dir)
    listener.setblocking(False)
    assert runner_threads(before) == []  # not before the first start / message
    assert rt.pipeline.accept("dummy", [message("m3", "hi")]) == 1
    threads = runner_threads(before)
    assert len(threads) == rt.settings.pipeline_threads and all(t.is_alive() for t in threads)
    (reply,) = wait_sent(1)
    assert reply == ("d1", "dummy:alice", 'Sophon default agent. You said: "hi"')
    with pytest.raises(BlockingIOError):
        listener.recv(16)


def _waiting(thread: threading.Thread) -> bool:
    """True when ``thread`` is blocked in a Condition.wait (the runner's idle wait)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__:
            return True
        frame = frame.f_back
    return False


def test_wake_stops_the_runners_idle_wait(make_runtime, sent, monkeypatch):
    """What the sender does on a datagram: runners waiting out a (here very long) idle poll claim at once."""
    monkeypatch.setattr(pipeline_mod, "IDLE_POLL", 120.0)
    before = threading.enumerate()
    rt = make_runtime([dummy_channel()], pipeline_threads=2)
    rt.pipeline.start()
    runners = runner_threads(before)
    assert len(runners) == 2
    deadline = time.monotonic() + 10
    while not all(_waiting(t) for t in runners):
        assert time.monotonic() < deadline, "the runners never went idle"
        time.sleep(0.02)
    # a job stored behind the pipeline's back (as a webhook worker of another process does)
    channel = rt.config.get("d1")
    msg = message("m4", "wake up")
    outcome, _ = rt.store.accept_inbound(msg, pipeline_mod.session_key(channel, msg), 100)
    assert outcome == "queued"
    assert sent == []
    rt.pipeline.wake()
    (reply,) = wait_sent(1, timeout=10)  # without the wake-up: 120 s
    assert reply[2] == 'Sophon default agent. You said: "wake up"'


# --- python -m sophon_core.sender ------------------------------------------------------------

@pytest.fixture
def sender_env(tmp_path):
    channels = tmp_path / "channels.json"
    channels.write_text(json.dumps({"channels": []}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPHON_", "PROMETHEUS_"))}
    env.update(SOPHON_CHANNELS=str(channels), SOPHON_DATA_DIR=str(tmp_path / "data"),
               SOPHON_PLUGINS="default_agent", SOPHON_PIPELINE_THREADS="2")
    return env


def start_sender(env, log: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sophon_core.sender", *args], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_log(proc: subprocess.Popen, log: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = log.read_text(errors="replace")
        if text in out:
            return out
        assert proc.poll() is None, f"the sender exited with {proc.returncode}:\n{out}"
        assert time.monotonic() < deadline, f"no {text!r} in the sender's log within {timeout} s:\n{out}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def test_sender_refuses_to_start_while_another_holds_the_lock(tmp_path, sender_env):
    data = tmp_path / "data"
    data.mkdir()
    with Holder(data / "sender.lock"):
        out = subprocess.run([sys.executable, "-m", "sophon_core.sender"], env=sender_env, capture_output=True,
                             text=True, timeout=60)
    assert out.returncode != 0
    assert "sender.lock" in out.stderr and "already running" in out.stderr, out.stderr
    assert "reply sender up" not in out.stderr


def test_second_real_sender_refuses_and_sigterm_stops_the_first(tmp_path, sender_env):
    data = tmp_path / "data"
    first = start_sender(sender_env, tmp_path / "first.log", "--nice", "0")
    try:
        wait_for_log(first, tmp_path / "first.log", "reply sender up")
        assert sender.running(data)
        second = subprocess.run([sys.executable, "-m", "sophon_core.sender"], env=sender_env, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode != 0
        assert "sender.lock" in second.stderr and "already running" in second.stderr, second.stderr
        assert first.poll() is None  # the first one is not disturbed
        started = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
        took = time.monotonic() - started
    finally:
        stop(first)
    assert took < 5, f"the sender took {took:.1f} s to stop"
    assert "reply sender stopped" in (tmp_path / "first.log").read_text()
    assert not sender.running(data)
    # the lock is free again: a new sender starts
    again = start_sender(sender_env, tmp_path / "again.log")
    try:
        wait_for_log(again, tmp_path / "again.log", "reply sender up")
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=10) == 0
    finally:
        stop(again)


@pytest.mark.parametrize("raw, expected", [(None, "19"), ("", "19"), (" IDLE ", "idle"), ("0", "0"),
                                           ("19", "19"), (" 07 ", "7")])
def test_sender_nice_is_19_by_default_a_nice_increment_or_idle(raw, expected):
    env = {} if raw is None else {"SOPHON_SENDER_NICE": raw}
    assert Settings.from_env(env).sender_nice == expected


@pytest.mark.parametrize("raw", ["20", "-1", "1.5", "low", "nice"])
def test_a_bad_sender_nice_says_what_to_write(raw):
    with pytest.raises(ValueError) as err:
        Settings.from_env({"SOPHON_SENDER_NICE": raw})
    assert f"SOPHON_SENDER_NICE={raw!r}" in str(err.value)
    assert "idle" in str(err.value) and "0 to 19" in str(err.value) and "default 19" in str(err.value)


THREAD_PRIORITY = ("import os, sys, threading\n"
                   "from sophon_core.sender import lower_priority\n"
                   "base = os.getpriority(os.PRIO_PROCESS, 0)\n"
                   "applied = lower_priority(sys.argv[1])\n"
                   "seen = []\n"
                   "t = threading.Thread(target=lambda: seen.append((os.sched_getscheduler(0),"
                   " os.getpriority(os.PRIO_PROCESS, 0) - base)))\n"
                   "t.start(); t.join()\n"
                   "print(applied, *seen[0])\n")


@pytest.mark.parametrize("nice, applied, policy, added", [("idle", "SCHED_IDLE", "SCHED_IDLE", 0),
                                                          ("7", "nice +7", "SCHED_OTHER", 7),
                                                          ("0", "nice +0", "SCHED_OTHER", 0)])
def test_lower_priority_reaches_the_threads_started_after_it(nice, applied, policy, added):
    """The sender lowers its priority before its runner threads start; they inherit it."""
    out = subprocess.run([sys.executable, "-c", THREAD_PRIORITY, nice], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out[:-2] == applied.split()
    assert (int(out[-2]), int(out[-1])) == (getattr(os, policy), added)


def test_a_real_sender_runs_its_threads_under_sched_idle_and_refuses_a_bad_nice(tmp_path, sender_env):
    proc = start_sender({**sender_env, "SOPHON_SENDER_NICE": "idle"}, tmp_path / "idle.log")
    try:
        line = wait_for_log(proc, tmp_path / "idle.log", "reply sender up")
        assert "SCHED_IDLE" in line
        tids = os.listdir(f"/proc/{proc.pid}/task")
        assert len(tids) >= 4  # the main thread, the 2 runner threads, the heartbeat, the wake-up listener
        assert {os.sched_getscheduler(int(tid)) for tid in tids} == {os.SCHED_IDLE}
    finally:
        stop(proc)
    bad = subprocess.run([sys.executable, "-m", "sophon_core.sender", "--nice", "20"], env=sender_env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--nice='20' must be a whole number from 0 to 19" in bad.stderr and "reply sender up" not in bad.stderr


def _alive(pid: int) -> bool:
    """The process runs (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_sender_stops_when_the_process_that_started_it_is_gone(tmp_path, sender_env):
    """No PR_SET_PDEATHSIG here: the sender notices by itself that its parent is gone."""
    parent = ("import subprocess, sys, time\n"
              "from sophon_core import sender\n"
              "p = subprocess.Popen([sys.executable, '-m', 'sophon_core.sender', '--nice', '0'])\n"
              "print(p.pid, flush=True)\n"
              "deadline = time.monotonic() + 20\n"
              "while not sender.running(sys.argv[1]) and time.monotonic() < deadline:\n"
              "    time.sleep(0.05)\n"
              "sys.exit(0 if sender.running(sys.argv[1]) else 3)\n")
    data = tmp_path / "data"
    log = (tmp_path / "orphan.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", parent, str(data)], env=sender_env, stdout=subprocess.PIPE,
                            stderr=log, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, (tmp_path / "orphan.log").read_text()
        pid = int(out.split()[0])
        deadline = time.monotonic() + 15
        while sender.running(data) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not sender.running(data), "the orphaned sender still runs"
        while _alive(pid) and time.monotonic() < deadline:  # (it logs its last line after the lock)
            time.sleep(0.05)
        assert not _alive(pid), "the orphaned sender released its lock but did not exit"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        log.close()
    text = (tmp_path / "orphan.log").read_text()
    assert "the process that started the reply sender is gone; stopping" in text
    assert "reply sender stopped" in text
    assert pid > 0


def test_a_job_for_a_channel_activated_a_moment_ago_elsewhere_is_answered(make_runtime, sent):
    """The process that accepted the message saw the channel active; the runner's copy of
    channels.json is up to a second old and still says inactive: it must look again, not
    give the message up (this failed a dashboard test: activate, text, no reply)."""
    rt = make_runtime([dummy_channel(enabled=False)])
    path = rt.settings.channels_path
    rt.reload_if_changed(every=0)  # the runner just checked: the next look is a second away
    assert rt.config.get("d1").enabled is False
    data = json.loads(path.read_text())
    data["channels"][0]["enabled"] = True
    path.write_text(json.dumps(data))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime even on coarse clocks
    # another process (which saw the new file) stored the message and its job
    assert rt.store.accept_inbound(message("m-new"), "agent:default:peer:d1:dummy:alice")[0] == "queued"
    rt.pipeline.start()
    (reply,) = wait_sent(1)
    assert reply == ("d1", "dummy:alice", 'Sophon default agent. You said: "hello"')
    assert job_states_become(rt.store, {"done": 1}) == {"done": 1}


# --- yielding to busy webhooks (SOPHON_SENDER_YIELD, sender.LoadGate) ------------------------------

class Clock:
    """A clock the test moves by hand (``LoadGate`` takes its clock as an argument)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_notify_carries_a_workers_cpu_share(tmp_path, wake_socket):
    data = tmp_path / "data"
    listener = wake_socket(data)
    listener.settimeout(5)
    sender.notify(data, 0.8768)
    assert listener.recv(64) == f"load {os.getpid()} 0.877".encode()


def test_the_gate_holds_new_replies_back_while_the_workers_use_most_of_the_cpus():
    clock = Clock()
    gate = sender.LoadGate(cpus=2.0, clock=clock)
    gate.report(101, 1.0)  # one worker, one of two CPUs: the sender has the other
    assert gate.hold_until == 0.0 and gate.holds == 0
    gate.report(102, 0.49)  # two workers, 1.49 of 2 CPUs: under 75%
    assert gate.hold_until == 0.0
    gate.report(102, 0.5)  # 1.5 of 2 CPUs
    assert gate.share == pytest.approx(1.5)
    assert gate.hold_until == clock.now + sender.HOLD and gate.holds == 1
    clock.now += 0.2
    gate.report(101, 1.02)  # still busy (1.52 CPUs): the hold goes on (the same hold)
    assert gate.hold_until == clock.now + sender.HOLD and gate.holds == 1
    assert gate.held == pytest.approx(0.2 + sender.HOLD)
    held_until = gate.hold_until
    clock.now += 0.2
    gate.report(101, 0.2)  # no longer busy: the hold runs out by itself
    assert gate.hold_until == held_until and gate.holds == 1


@pytest.mark.parametrize("pid, share", [(101, float("nan")), (101, float("inf")), (101, -1.0), (101, 2000.0),
                                        (0, 0.9), (-5, 0.9)])
def test_the_gate_ignores_reports_that_are_not_a_cpu_share(pid, share):
    gate = sender.LoadGate(cpus=1.0, clock=Clock())
    gate.report(pid, share)
    assert gate.hold_until == 0.0 and gate.share == 0.0
    gate.report(102, 0.5)
    assert gate.share == pytest.approx(0.5) and gate.hold_until == 0.0  # the bad one was not counted


def test_the_gate_forgets_workers_that_went_quiet():
    clock = Clock()
    gate = sender.LoadGate(cpus=1.0, clock=clock)
    gate.report(101, 0.5)
    clock.now += sender.STALE + 0.1  # 101 reports no more (no more webhooks)
    gate.report(102, 0.5)
    assert gate.share == pytest.approx(0.5) and gate.hold_until == 0.0
    gate.report(101, 0.3)
    assert gate.share == pytest.approx(0.8) and gate.hold_until == clock.now + sender.HOLD


def test_the_gate_never_holds_longer_than_max_hold_in_one_go():
    """A load that never ends: the sender yields MAX_HOLD seconds, answers for FREE_AFTER, yields again."""
    clock = Clock()
    gate = sender.LoadGate(cpus=1.0, clock=clock)
    start, step = clock.now, 0.1
    free_at = []  # report times at which new replies may start
    while clock.now < start + 2 * (sender.MAX_HOLD + sender.FREE_AFTER + sender.HOLD):
        gate.report(101, 0.99)
        if gate.hold_until <= clock.now:
            free_at.append(clock.now)
        clock.now += step
    assert free_at, "the gate held the replies back for good"
    first_free = free_at[0] - start
    assert sender.MAX_HOLD <= first_free <= sender.MAX_HOLD + 1.5 * step
    assert gate.holds >= 2  # and yields again after its free spell
    spell = [t for t in free_at if t < free_at[0] + sender.FREE_AFTER + 1]
    assert sender.FREE_AFTER - 3 * step <= spell[-1] - spell[0] <= sender.FREE_AFTER
    assert gate.held <= gate.holds * sender.MAX_HOLD + 1e-9


def test_usable_cpus_follows_the_cpu_affinity():
    one = min(os.sched_getaffinity(0))
    code = ("import os, sys\nfrom sophon_core.sender import usable_cpus\n"
            f"os.sched_setaffinity(0, {{{one}}})\nprint(usable_cpus())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert 0 < float(out.stdout) <= 1.0
    assert 0 < sender.usable_cpus() <= len(os.sched_getaffinity(0))


def burn(seconds: float) -> None:
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


def test_a_webhook_worker_reports_the_cpu_it_used_once_per_load_window(make_runtime, wake_socket, monkeypatch):
    rt = make_runtime([dummy_channel()], env={"SOPHON_REPLIES": "sender"})
    listener = wake_socket(rt.settings.data_dir)
    listener.settimeout(5)
    wall0, cpu0 = time.monotonic(), time.process_time()
    burn(max(0.5, 2 * sender.LOAD_WINDOW))  # busy (the window began when the pipeline was made)
    assert rt.pipeline.accept("dummy", [message("cpu1")]) == 1
    wall1, cpu1 = time.monotonic(), time.process_time()
    word, pid, share = listener.recv(64).split()
    assert (word, int(pid)) == (b"load", os.getpid())
    # the window holds ours: at least our CPU over a little more than our time (the runtime's making)
    assert 0.5 * (cpu1 - cpu0) / (wall1 - wall0) <= float(share) <= 1.5, share
    monkeypatch.setattr(sender, "LOAD_WINDOW", 1e9)
    assert rt.pipeline.accept("dummy", [message("cpu2")]) == 1
    assert listener.recv(64) == b"!"  # within the window: a plain wake-up
    monkeypatch.setattr(sender, "LOAD_WINDOW", 0.2)
    time.sleep(0.6)  # idle
    assert rt.pipeline.accept("dummy", [message("cpu3")]) == 1
    word, pid, share = listener.recv(64).split()
    assert word == b"load" and float(share) < 0.5, share


def test_a_sender_yields_to_busy_webhooks_and_answers_once_they_calm_down(make_runtime, sent, wake_socket,
                                                                           monkeypatch):
    """The sender's side, in-process: its listener (``sender._listen``) reads the workers' CPU
    reports into a LoadGate; its runners start no reply while the gate holds, and answer after."""
    monkeypatch.setattr(sender, "HOLD", 3.0)  # (a slow moment of this test's reports must not end it)
    rt = make_runtime([dummy_channel()], pipeline_threads=2)  # the sender runs a workers-mode pipeline
    data = rt.settings.data_dir
    sock = wake_socket(data)
    stop_listening = threading.Event()
    gate = sender.LoadGate(cpus=1.0)
    listener = threading.Thread(target=sender._listen, args=(sock, rt.pipeline, stop_listening, gate), daemon=True)
    listener.start()
    try:
        sender.notify(data, 0.95)  # a worker: "I used 95% of a CPU"
        deadline = time.monotonic() + 5
        while rt.pipeline.hold_until <= time.monotonic():
            assert time.monotonic() < deadline, "the sender did not start yielding"
            time.sleep(0.01)
        # The runners start once the hold is up: a runner already past its hold check when
        # the report lands may still take a job (a reply under way, which the gate lets
        # finish); with a slow first claim that raced this test's job (a CI failure).
        rt.pipeline.start()
        channel = rt.config.get("d1")
        msg = message("y1", "busy now")
        assert rt.store.accept_inbound(msg, pipeline_mod.session_key(channel, msg), 100)[0] == "queued"
        rt.pipeline.wake()
        busy_until = time.monotonic() + 1.2
        while time.monotonic() < busy_until:  # the workers stay busy
            sender.notify(data, 0.95)
            time.sleep(0.1)
            assert sent == [], "a reply started while the webhooks were busy"
        assert rt.store.job_states() == {"queued": 1}
        assert gate.holds == 1 and gate.held >= 1.2
        calm = time.monotonic()
        (reply,) = wait_sent(1, timeout=sender.HOLD + 10)  # no more busy reports: the hold runs out
        assert reply[2] == 'Sophon default agent. You said: "busy now"'
        assert time.monotonic() - calm <= sender.HOLD + 10
    finally:
        stop_listening.set()
        sender.notify(data)  # (wakes the listener so that it sees the stop)
        listener.join(5)
    assert not listener.is_alive()


def test_sender_yield_is_on_by_default_and_says_what_to_write():
    assert Settings.from_env({}).sender_yield is True
    assert Settings.from_env({"SOPHON_SENDER_YIELD": " off "}).sender_yield is False
    assert Settings.from_env({"SOPHON_SENDER_YIELD": "ON"}).sender_yield is True
    with pytest.raises(ValueError) as err:
        Settings.from_env({"SOPHON_SENDER_YIELD": "sometimes"})
    assert "SOPHON_SENDER_YIELD='sometimes'" in str(err.value) and "ON, OFF" in str(err.value)


def test_a_real_sender_says_whether_it_yields(tmp_path, sender_env):
    on = start_sender(sender_env, tmp_path / "on.log", "--nice", "0")
    try:
        line = wait_for_log(on, tmp_path / "on.log", "reply sender up")
        assert "yields to busy webhooks (75% of" in line
    finally:
        stop(on)
    off = start_sender({**sender_env, "SOPHON_SENDER_YIELD": "off"}, tmp_path / "off.log", "--nice", "0")
    try:
        line = wait_for_log(off, tmp_path / "off.log", "reply sender up")
        assert "never yields" in line and "yields to busy" not in line
    finally:
        stop(off)
