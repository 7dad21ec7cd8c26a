"""Which commits are fsynced: acknowledgements and consent always (FULL), the runners'
reply bookkeeping not by itself (NORMAL), and that bookkeeping reaches the disk within
about a second anyway. Real SQLite files; no timing is asserted."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import falcon.testing

from dummy_channel import dummy_channel, wait_sent
from sophon_core import store as store_mod
from sophon_core.app import create_app
from sophon_core.models import InboundMessage
from sophon_core.pipeline import STATUS_RANK
from sophon_core.store import Store

FULL, NORMAL = 2, 1  # what PRAGMA synchronous answers


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
    """Record (thread name, PRAGMA synchronous in effect) for each write transaction."""
    seen = []
    lock = threading.Lock()
    write, commit_batch = store._write, store._commit_batch

    @contextmanager
    def spied_write(durable=False):
        with write(durable) as db:
            yield db
            level = db.execute("PRAGMA synchronous").fetchone()[0]
            with lock:
                seen.append((threading.current_thread().name, level))

    def spied_commit_batch(batch):
        level = store._conn().execute("PRAGMA synchronous").fetchone()[0]
        with lock:
            seen.append((threading.current_thread().name + " (accept)", level))
        return commit_batch(batch)

    store._write, store._commit_batch = spied_write, spied_commit_batch
    return seen


def test_runner_threads_commit_without_an_fsync_and_acknowledgements_with_one(make_runtime, sent):
    rt = make_runtime([dummy_channel()])
    seen = spy_commits(rt.store)
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
    accepts = [level for name, level in seen if name.endswith("(accept)")]
    runner = [level for name, level in seen if name.startswith("sophon-runner-")]
    assert accepts == [FULL], seen  # the acknowledged message: fsynced before the 200
    assert len(runner) >= 4 and set(runner) == {NORMAL}, seen  # claim, parts, begin_part, part_sent


def test_a_relaxed_thread_still_fsyncs_acknowledgements_and_consent(tmp_path):
    store = Store(tmp_path / "s.db")

    def work():
        store.relax_this_thread()
        db = store._conn()
        statements = []
        db.set_trace_callback(statements.append)
        runs = {}
        for name, call in (
                ("accept", lambda: store.accept_inbound(msg("m1"), "s")),
                ("consent", lambda: store.record_consent(msg("m2", "STOP", intent="opt_out"), "s")),
                ("opt_out", lambda: store.set_opt_out("c1", "+1666", "STOP")),
                ("status", lambda: store.record_status("c1", "SMx", "sent", None, STATUS_RANK)),
                ("count", lambda: store.count("c1", failed=1))):
            statements.clear()
            call()
            runs[name] = [s for s in statements if s.startswith(("PRAGMA synchronous", "BEGIN", "COMMIT"))]
        return runs, db.execute("PRAGMA synchronous").fetchone()[0]

    runs, level_after = in_thread(work)
    durable = ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE", "COMMIT", "PRAGMA synchronous=NORMAL"]
    for name in ("accept", "consent", "opt_out", "status"):
        assert runs[name] == durable, (name, runs[name])
    assert runs["count"] == ["BEGIN IMMEDIATE", "COMMIT"]  # bookkeeping: relaxed
    assert level_after == NORMAL
    assert in_thread(lambda: store._conn().execute("PRAGMA synchronous").fetchone()[0]) == FULL  # others


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
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    store.count("c1", failed=1)  # fsynced by SQLite itself (FULL): nothing left to do
    assert store.sync_relaxed() is False

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
