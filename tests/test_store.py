"""The SQLite store: de-duplication, the job queue's leases and order, history; on real files."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from sophon_core.models import DroppedAttachment, InboundMessage
from sophon_core.store import Store


def msg(mid, text="hi", sender="+1555", **kw):
    return InboundMessage("c1", mid, sender, "+1000", text, **kw)


def test_accept_stores_message_and_job_and_claim_round_trips_the_message(tmp_path):
    store = Store(tmp_path / "s.db")
    original = msg("m1", "hello", dropped_attachments=(DroppedAttachment("image/png"),),
                   metadata={"FromCity": "X"}, canned_reply=None)
    row = store.accept_inbound(original, "s")
    assert row is not None and store.accept_inbound(original, "s") is None
    job = store.claim("w1", lease=30)
    assert job.message == original and job.inbound_id == row and job.attempts == 1
    assert store.claim("w2", lease=30) is None  # leased
    assert store.job_states() == {"running": 1}


def test_history_is_in_conversation_order_even_when_replies_are_stored_late(tmp_path):
    store = Store(tmp_path / "s.db")
    for i in range(3):
        store.accept_inbound(msg(f"m{i}", f"q{i}"), "s")
    job0 = store.claim("w", 30)
    store.set_part(store.parts(job0, ["a0"], "+1555")[0].id, "queued", provider_id="SM0")
    store.complete(job0.id)
    job1 = store.claim("w", 30)
    failed, retried = store.parts(job1, ["a1", "a1b"], "+1555")
    store.set_part(failed.id, "failed", error="x")
    store.skip_unsent(job1.id, "an earlier part failed")
    store.fail(job1.id, "x")
    job2 = store.claim("w", 30)
    got = [(t.role, t.text) for t in store.history("s", current_id=job2.inbound_id)]
    assert got == [("user", "q0"), ("agent", "a0"), ("user", "q1")]
    assert [t.text for t in store.history("s", current_id=job2.inbound_id, limit=2)] == ["a0", "q1"]
    assert store.history("other", current_id=job2.inbound_id) == []


def test_a_sessions_jobs_run_one_at_a_time_oldest_first(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("a1"), "ann")
    store.accept_inbound(msg("a2"), "ann")
    store.accept_inbound(msg("b1"), "bob")
    first = store.claim("w1", 30)
    second = store.claim("w2", 30)
    assert (first.message.provider_message_id, second.message.provider_message_id) == ("a1", "b1")
    assert store.claim("w3", 30) is None  # a2 waits for a1
    store.complete(first.id)
    assert store.claim("w3", 30).message.provider_message_id == "a2"


def test_an_expired_lease_is_claimed_again_and_renewal_keeps_it(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    store.claim("dead-worker", lease=0.2)
    store.accept_inbound(msg("m2"), "t")
    live = store.claim("live-worker", lease=0.2)
    time.sleep(0.1)
    assert store.renew("live-worker", lease=0.5) == 1
    time.sleep(0.2)
    again = store.claim("other", lease=30)
    assert again.message.provider_message_id == "m1" and again.attempts == 2
    assert store.claim("other", lease=30) is None  # m2's lease was renewed
    assert live.message.provider_message_id == "m2"


def test_retry_later_holds_the_job_until_due(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    job = store.claim("w", 30)
    store.retry_later(job.id, time.time() + 0.3, "429")
    assert store.claim("w", 30) is None
    time.sleep(0.35)
    assert store.claim("w", 30).attempts == 2


def test_parts_are_recorded_once_before_sending(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    job = store.claim("w", 30)
    parts = store.parts(job, ["p0", "p1"], "+1555")
    assert [(p.part_no, p.text, p.status) for p in parts] == [(0, "p0", "pending"), (1, "p1", "pending")]
    store.set_part(parts[0].id, "queued", provider_id="SM1")
    again = store.parts(job, ["other", "texts"], "+1555")  # a rerun keeps what was recorded
    assert [(p.text, p.status, p.provider_id) for p in again] == [("p0", "queued", "SM1"), ("p1", "pending", None)]


def test_concurrent_claims_from_many_processes_never_share_a_job(tmp_path):
    path = tmp_path / "s.db"
    Store(path)
    for i in range(40):
        Store(path).accept_inbound(msg(f"m{i}"), f"s{i}")
    stores = [Store(path) for _ in range(4)]  # like several gunicorn workers
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(n):
        while (job := stores[n % 4].claim(f"w{n}", 30)) is not None:
            with lock:
                claimed.append(job.id)
            stores[n % 4].complete(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40


def test_inbound_is_stored_once_per_provider_id_even_from_many_threads(tmp_path):
    path = tmp_path / "s.db"
    stores = [Store(path) for _ in range(4)]
    results = []
    barrier = threading.Barrier(8)

    def deliver(i):
        barrier.wait()
        results.append(stores[i % 4].accept_inbound(msg("SMdup"), "s"))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_synchronous_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        Store(tmp_path / "s.db", "OFF")
