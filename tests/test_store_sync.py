"""Which commits are fsynced: acknowledgements and consent always (FULL), the runners'
reply bookkeeping not by itself (NORMAL), and that bookkeeping reaches the disk within
about a second anyway. Real SQLite files; no timing is asserted."""
from __future__ import annotations

import os
import sys
import threading
import time

import falcon.testing
import pytest

from dummy_channel import dummy_channel, wait_sent
from store_spies import FsyncLog
from sophon_core import store as store_mod
from sophon_core.app import create_app
from sophon_core.models import InboundMessage
from sophon_core.pipeline import STATUS_RANK
from sophon_core.store import Store

FULL, NORMAL = 2, 1  # what PRAGMA synchronous answers (SQLite itself never fsyncs a commit now)


def msg(mid, text="hi", sender="+1555", **kw):
    return InboundMessage("c1", mid, sender, "+1000", text, **kw)


def in_thread(fn):
    """Run ``fn`` in a new thread (a new store connection); return its result."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # pragma: no cover - re-raised below
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


def spy_commits(store):
    """Record each commit (thread name, its number, whether the thread then waited for an
    fsync round covering it) and each barrier (thread name, number)."""
    commits, barriers, awaited = [], [], []
    lock = threading.Lock()
    number, await_sync = store._number, store._await_sync

    def spied_number():
        n = number()
        caller = sys._getframe(1).f_code.co_name
        with lock:
            (barriers if caller == "_barrier" else commits).append(
                (threading.current_thread().name + (" (accept)" if caller == "_commit_batch" else ""), n))
        return n

    def spied_await_sync(n):
        with lock:
            awaited.append(n)
        return await_sync(n)

    store._number, store._await_sync = spied_number, spied_await_sync
    return commits, barriers, awaited


def test_runner_threads_commit_without_an_fsync_and_acknowledgements_with_one(make_runtime, sent):
    rt = make_runtime([dummy_channel()])
    commits, barriers, awaited = spy_commits(rt.store)
    client = falcon.testing.TestClient(create_app(rt))
    r = client.simulate_post("/api/channels/dummy/webhook",
                             json={"to": "dummy:bob", "from": "dummy:ann", "id": "m1", "text": "hi",
                                   "token": "s3cret-token"})
    assert r.status_code == 200
    wait_sent(1)
    deadline = time.monotonic() + 10
    while rt.store.job_states() != {"done": 1} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rt.store.job_states() == {"done": 1}
    accepts = [n for name, n in commits if name.endswith("(accept)")]
    runner = [n for name, n in commits if name.startswith("sophon-runner-")]
    assert len(accepts) == 1 and accepts[0] in awaited, (commits, awaited)  # on disk before the 200
    assert len(runner) >= 4 and not set(runner) & set(awaited), (commits, awaited)  # claim, parts, begin, sent
    # the claim waited for a round that began after it (the job's message is on disk before any reply)
    assert [name for name, _ in barriers if name.startswith("sophon-runner-")], barriers


def test_a_relaxed_thread_still_fsyncs_acknowledgements_and_consent(tmp_path):
    store = Store(tmp_path / "s.db")
    commits, _, awaited = spy_commits(store)

    def work():
        store.relax_this_thread()
        runs = {}
        for name, call in (
                ("accept", lambda: store.accept_inbound(msg("m1"), "s")),
                ("consent", lambda: store.record_consent(msg("m2", "STOP", intent="opt_out"), "s")),
                ("opt_out", lambda: store.set_opt_out("c1", "+1666", "STOP")),
                ("status", lambda: store.record_status("c1", "SMx", "sent", None, STATUS_RANK)),
                ("count", lambda: store.count("c1", failed=1))):
            before = len(commits)
            call()
            (_, n), = commits[before:]
            runs[name] = n in awaited
        return runs

    runs = in_thread(work)
    assert runs == {"accept": True, "consent": True, "opt_out": True, "status": True, "count": False}
    assert in_thread(lambda: store._conn().execute("PRAGMA synchronous").fetchone()[0]) == NORMAL  # see below


def test_an_acknowledgement_returns_only_after_an_fsync_that_began_after_its_commit(tmp_path, monkeypatch):
    """SQLite commits without an fsync (NORMAL); the store fsyncs the log after the commit,
    outside the write lock, and each accept returns only after such an fsync ended.
    Duplicates too: their first copy may still be waiting for its fsync."""
    store = Store(tmp_path / "s.db")
    log = FsyncLog(monkeypatch)
    commit_batch = store._commit_batch

    def spied_commit_batch(batch):
        commit_batch(batch)
        log.add("commit", {item.args[0].text for item in batch})

    store._commit_batch = spied_commit_batch
    outcomes = []

    def webhook(mid, call):
        outcome, _ = store.accept_inbound(msg(mid, call, sender=f"+1{mid}"), "s")
        outcomes.append(outcome)
        log.add("return", call)

    threads = [threading.Thread(target=webhook, args=(f"m{i % 40}", f"call {i}"))
               for i in range(80)]  # 40 duplicates
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["duplicate"] * 40 + ["queued"] * 40
    events = log.events
    returns = [(i, e[1]) for i, e in enumerate(events) if e[0] == "return"]
    assert len(returns) == 80
    for r, call in returns:
        commit, = (i for i, e in enumerate(events[:r]) if e[0] == "commit" and call in e[1])
        assert any(e[0] == "end" and e[1] > commit for e in events[commit:r]), (call, events[commit:r + 1])
    assert sum(e[0] == "begin" for e in events) < 80  # rounds are shared


def test_a_failed_fsync_fails_the_acknowledgement_and_later_ones_until_one_works(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.db")
    broken = threading.Event()
    log = FsyncLog(monkeypatch, fail=broken.is_set)
    broken.set()
    for mid in ("m1", "m2"):
        with pytest.raises(OSError, match="could not be synced"):
            store.accept_inbound(msg(mid), "s")
    with pytest.raises(OSError):  # Twilio's retry: a duplicate, and still not on disk
        store.accept_inbound(msg("m1"), "s")

    def claim():
        store.relax_this_thread()
        return store.claim("r", 30)

    with pytest.raises(OSError):  # no job is handed out while its message may not be on disk
        in_thread(claim)
    broken.clear()
    assert store.accept_inbound(msg("m1"), "s") == ("duplicate", None)
    assert store.accept_inbound(msg("m3"), "s")[0] == "queued"
    assert in_thread(claim) is not None
    assert [e[0] for e in log.events if e[0] in ("fail", "end")][:4] == ["fail"] * 4
    assert store.job_states() == {"queued": 2, "running": 1}  # m1 (given back, claimed again), m2, m3


@pytest.mark.parametrize("journal", ["on", "off"])  # (on: the journal's fdatasync failed; off: the store's)
def test_a_webhook_whose_fsync_failed_gets_a_5xx_and_its_retry_a_200_once_synced(make_runtime, sent,
                                                                                monkeypatch, journal):
    rt = make_runtime([dummy_channel()], env={"SOPHON_ACK_JOURNAL": journal})
    broken = threading.Event()
    FsyncLog(monkeypatch, fail=broken.is_set)
    client = falcon.testing.TestClient(create_app(rt))
    body = {"to": "dummy:bob", "from": "dummy:ann", "id": "m1", "text": "hi", "token": "s3cret-token"}
    broken.set()
    assert client.simulate_post("/api/channels/dummy/webhook", json=body).status_code >= 500
    assert client.simulate_post("/api/channels/dummy/webhook", json=body).status_code >= 500
    broken.clear()
    assert client.simulate_post("/api/channels/dummy/webhook", json=body).status_code == 200
    wait_sent(1)
    time.sleep(0.3)
    assert len(sent) == 1


def test_a_normal_store_is_not_changed_by_relaxing(tmp_path):
    store = Store(tmp_path / "s.db", "NORMAL")

    def work():
        store.relax_this_thread()
        store.count("c1", failed=1)
        return store._conn().execute("PRAGMA synchronous").fetchone()[0]

    assert in_thread(work) == NORMAL
    assert store.sync_relaxed() is False  # NORMAL promised nothing against power loss


def test_relaxed_commits_are_fsynced_by_sync_relaxed_and_only_when_there_are_some(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.db")
    synced = []
    real_sync = os.fdatasync

    def fdatasync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_sync(fd)

    monkeypatch.setattr(store_mod.os, "fdatasync", fdatasync)
    store.count("c1", failed=1)  # fsynced before it returned (FULL): nothing left to do
    assert store.sync_relaxed() is False
    synced.clear()

    def relaxed_write():
        store.relax_this_thread()
        store.count("c1", failed=1)

    in_thread(relaxed_write)
    assert store.sync_relaxed() is True
    assert synced == [str(tmp_path / "s.db-wal")]
    assert store.sync_relaxed() is False  # nothing new since
    assert synced == [str(tmp_path / "s.db-wal")]


def test_the_pipeline_syncs_the_runners_commits_within_about_a_second(make_runtime, sent):
    rt = make_runtime([dummy_channel()])
    synced = threading.Event()
    real = rt.store.sync_relaxed

    def sync_relaxed():
        did = real()
        if did:
            synced.set()
        return did

    rt.store.sync_relaxed = sync_relaxed
    client = falcon.testing.TestClient(create_app(rt))
    client.simulate_post("/api/channels/dummy/webhook",
                         json={"to": "dummy:bob", "from": "dummy:ann", "id": "m1", "text": "hi",
                               "token": "s3cret-token"})
    wait_sent(1)
    assert synced.wait(20), "the runners' relaxed commits were never fsynced"


def test_sophon_serve_gives_a_worker_enough_threads_to_share_fsyncs():
    """A webhook thread waits for its group commit's fsync; with 4 threads per worker at most
    4 acknowledgements could share one (about 2 did, on average, in bench/run)."""
    from sophon_core.cli import serve
    from sophon_core.server import DEFAULT_THREADS

    threads = next(p for p in serve.params if p.name == "threads")
    assert threads.default == DEFAULT_THREADS >= 16
