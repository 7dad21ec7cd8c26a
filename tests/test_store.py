"""The SQLite store: de-duplication, fenced job leases and order, consent, budget, history; real files."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from sophon_core.models import DroppedAttachment, InboundMessage
from sophon_core.pipeline import STATUS_RANK
from sophon_core.store import HISTORY, HOURLY_COUNT, LeaseLost, Store
from store_spies import as_older_version, index_names


def msg(mid, text="hi", sender="+1555", **kw):
    return InboundMessage("c1", mid, sender, "+1000", text, **kw)


def send_all(store, job, texts, provider_ids):
    for part, sid in zip(store.parts(job, texts, job.message.sender), provider_ids):
        assert store.begin_part(job, part, 1, daily_budget=1000) == "ok"
        store.part_sent(job, part, sid, "queued")


def test_accept_stores_message_and_job_and_claim_round_trips_the_message(tmp_path):
    store = Store(tmp_path / "s.db")
    original = msg("m1", "hello", dropped_attachments=(DroppedAttachment("image/png"),),
                   metadata={"FromCity": "X"}, canned_reply=None)
    outcome, row = store.accept_inbound(original, "s")
    assert outcome == "queued" and store.accept_inbound(original, "s") == ("duplicate", None)
    job = store.claim("w1", lease=30)
    assert job.message == original and job.inbound_id == row and job.attempts == 1
    assert store.claim("w2", lease=30) is None  # leased
    assert store.job_states() == {"running": 1}


def test_rate_limit_is_decided_inside_the_accepting_transaction(tmp_path):
    store = Store(tmp_path / "s.db")
    got = [store.accept_inbound(msg(f"m{i}"), "s", max_per_hour=2)[0] for i in range(4)]
    assert got == ["queued", "queued", "rate-limited", "rate-limited"]
    assert store.job_states() == {"queued": 2}


def test_a_flooding_sender_costs_each_message_the_same(tmp_path):
    """The hourly limit counts a sender's messages no further than the limit: its 400th
    message of the hour takes as many SQLite steps to store as its 20th (a count of all of
    them would take one more index entry per message)."""
    store = Store(tmp_path / "s.db")
    steps = [0]
    store._batch_conn().set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0, 1)
    cost = {}
    for i in range(401):
        steps[0] = 0
        assert store.accept_inbound(msg(f"m{i}"), "s", max_per_hour=5)[0] == ("queued" if i < 5 else "rate-limited")
        cost[i] = steps[0]
    assert cost[400] <= cost[20] + 5, (cost[20], cost[400])
    assert store.job_states() == {"queued": 5}


def test_history_is_in_conversation_order_even_when_replies_are_stored_late(tmp_path):
    store = Store(tmp_path / "s.db")
    for i in range(3):
        store.accept_inbound(msg(f"m{i}", f"q{i}"), "s")
    job0 = store.claim("w", 30)
    send_all(store, job0, ["a0"], ["SM0"])
    store.complete(job0)
    job1 = store.claim("w", 30)
    store.parts(job1, ["a1", "a1b"], "+1555")
    store.fail(job1, "x")  # its parts were never accepted: not part of the conversation
    job2 = store.claim("w", 30)
    got = [(t.role, t.text) for t in store.history("s", current_id=job2.inbound_id)]
    assert got == [("user", "q0"), ("agent", "a0"), ("user", "q1")]
    assert [t.text for t in store.history("s", current_id=job2.inbound_id, limit=2)] == ["a0", "q1"]
    assert store.history("other", current_id=job2.inbound_id) == []


def test_history_follows_the_acknowledgement_order_when_two_workers_stored_it_the_other_way_round(tmp_path):
    """Two workers' journals: q2 (acknowledged second) was stored first, with the lower id. q1
    is answered first (claim's order), and q2's agent sees q1 and its answer; q1's sees no q2.
    A message acknowledged before both but stored last (a dead worker's journal) is history
    of neither; both are its history."""
    store = Store(tmp_path / "s.db")
    now = time.time() - 10
    store.accept_batch([(msg("m2", "q2"), "s", None, None, now + 2, now + 2),
                        (msg("m1", "q1"), "s", None, None, now + 1, now + 1)])
    first = store.claim("w", 30)
    assert first.message.text == "q1"
    assert store.history("s", current_id=first.inbound_id) == []
    send_all(store, first, ["a1"], ["SM1"])
    store.complete(first)
    second = store.claim("w", 30)
    assert second.message.text == "q2" and second.inbound_id < first.inbound_id
    assert [(t.role, t.text) for t in store.history("s", current_id=second.inbound_id)] == [
        ("user", "q1"), ("agent", "a1")]
    send_all(store, second, ["a2"], ["SM2"])
    store.complete(second)
    store.accept_batch([(msg("m0", "q0"), "s", None, None, now, now)])
    late = store.claim("w", 30)
    assert late.message.text == "q0" and store.history("s", current_id=late.inbound_id) == []
    store.accept_inbound(msg("x", "other session"), "t")
    store.accept_inbound(msg("m3", "q3"), "s")
    send_all(store, late, ["a0"], ["SM0"])
    store.complete(late)
    store.complete(store.claim("w", 30))  # (the other session's)
    last = store.claim("w", 30)
    assert last.message.text == "q3"
    assert [t.text for t in store.history("s", current_id=last.inbound_id)] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert [t.text for t in store.history("s", current_id=last.inbound_id, limit=3)] == ["a1", "q2", "a2"]


def test_a_store_made_before_turn_at_gets_the_column_its_replies_their_turn_and_the_new_index(tmp_path):
    path = tmp_path / "old.db"
    store = Store(path)
    store.accept_inbound(msg("m0", "q0"), "s")
    store.accept_inbound(msg("m1", "q1"), "s")
    first = store.claim("w", 30)
    send_all(store, first, ["a0"], ["SM0"])  # (stored after q1 was acknowledged)
    store.complete(first)
    as_older_version(path, table="messages", column="turn_at", index="messages_in_turn_order",
                     old_index="CREATE INDEX messages_by_turn ON messages (session_key, COALESCE(reply_to, id), id)")
    store = Store(path)
    indexes = index_names(path, "messages")
    assert "messages_in_turn_order" in indexes and "messages_by_turn" not in indexes
    second = store.claim("w", 30)
    assert [t.text for t in store.history("s", current_id=second.inbound_id)] == ["q0", "a0"]

    def without_turn(old_index: bool) -> None:  # as a process of the older version stores a reply
        with sqlite3.connect(path) as db:
            db.execute("UPDATE messages SET turn_at = NULL WHERE reply_to IS NOT NULL")
            if old_index:
                db.execute("CREATE INDEX messages_by_turn ON messages (session_key, COALESCE(reply_to, id), id)")

    for old_index in (True, False):  # (an older process opened the store since, or was running still)
        without_turn(old_index)
        assert [t.text for t in store.history("s", current_id=second.inbound_id)] == ["q0"]
        Store(path)  # a process starts
        assert "messages_by_turn" not in index_names(path, "messages")
        assert [t.text for t in store.history("s", current_id=second.inbound_id)] == ["q0", "a0"]


def test_a_sessions_jobs_run_one_at_a_time_oldest_first(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("a1"), "ann")
    store.accept_inbound(msg("a2"), "ann")
    store.accept_inbound(msg("b1"), "bob")
    first = store.claim("w1", 30)
    second = store.claim("w2", 30)
    assert (first.message.provider_message_id, second.message.provider_message_id) == ("a1", "b1")
    assert store.claim("w3", 30) is None  # a2 waits for a1
    store.complete(first)
    assert store.claim("w3", 30).message.provider_message_id == "a2"


def test_an_expired_lease_is_claimed_again_and_the_old_runner_is_fenced_off(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    stale = store.claim("dead-worker", lease=0.2)
    store.accept_inbound(msg("m2"), "t")
    live = store.claim("live-worker", lease=1.0)
    claimed = time.monotonic()
    assert store.renew([live], lease=30) == []
    time.sleep(max(0.0, claimed + 1.1 - time.monotonic()))  # both first leases have run out by now
    again = store.claim("other", lease=30)
    assert again.message.provider_message_id == "m1" and again.attempts == 2
    assert store.claim("other", lease=30) is None  # m2's lease was renewed
    # the first runner wakes up: every change it tries is refused
    (part,) = store.parts(again, ["reply"], "+1555")
    for attempt in (lambda: store.begin_part(stale, part, 1, 100), lambda: store.complete(stale),
                    lambda: store.retry_later(stale, time.time(), "x"), lambda: store.parts(stale, ["x"], "+1555", reply="r"),
                    lambda: store.parts(stale, ["x"], "+1555")):
        with pytest.raises(LeaseLost):
            attempt()
    assert store.renew([stale], lease=30) == [stale.id]
    assert store.begin_part(again, part, 1, 100) == "ok"


def test_renewing_a_job_its_runner_just_finished_is_not_a_lost_lease(tmp_path):
    """The heartbeat lists the jobs in hand, then renews them; one may finish in between."""
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    store.accept_inbound(msg("m2"), "t")
    done, retried = store.claim("w", 30), store.claim("w", 30)
    store.complete(done)
    store.retry_later(retried, time.time() + 60, "temporary")
    assert store.renew([done, retried], lease=30) == []


def test_retry_later_holds_the_job_until_due_and_remembers_the_first_failure(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    job = store.claim("w", 30)
    store.retry_later(job, time.time() + 0.3, "429")
    assert store.claim("w", 30) is None
    time.sleep(0.35)
    again = store.claim("w", 30)
    assert again.attempts == 2 and again.first_failure_at is not None
    store.retry_later(again, time.time(), "429")
    assert store.claim("w", 30).first_failure_at == again.first_failure_at


def test_parts_are_recorded_once_before_sending(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    job = store.claim("w", 30)
    parts = store.parts(job, ["p0", "p1"], "+1555")
    assert [(p.part_no, p.text, p.status) for p in parts] == [(0, "p0", "pending"), (1, "p1", "pending")]
    assert store.begin_part(job, parts[0], 2, 100) == "ok"
    store.part_sent(job, parts[0], "SM1", "queued")
    again = store.parts(job, ["other", "texts"], "+1555")  # a rerun keeps what was recorded
    assert [(p.text, p.status, p.provider_id) for p in again] == [("p0", "queued", "SM1"), ("p1", "pending", None)]


def test_budget_and_opt_out_are_checked_when_a_part_is_about_to_go(tmp_path):
    store = Store(tmp_path / "s.db")
    for i in range(3):
        store.accept_inbound(msg(f"m{i}", sender=f"+1{i}"), f"s{i}")
    jobs = [store.claim("w", 30) for _ in range(3)]
    parts = [store.parts(j, ["x"], j.message.sender)[0] for j in jobs]
    assert store.begin_part(jobs[0], parts[0], 3, daily_budget=5) == "ok"
    assert store.begin_part(jobs[1], parts[1], 3, daily_budget=5) == "over_budget"
    store.part_unsent(jobs[0], parts[0], 3, "503")  # not taken: the units come back
    assert store.begin_part(jobs[1], parts[1], 3, daily_budget=5) == "ok"
    store.record_consent(msg("stop", "STOP", sender="+12", intent="opt_out"), "s2")
    assert store.begin_part(jobs[2], parts[2], 1, daily_budget=100) == "opted_out"


def test_a_stop_is_applied_even_when_its_first_delivery_was_stored_without_it(tmp_path):
    store = Store(tmp_path / "s.db")
    stop = msg("SMstop", "stop", intent="opt_out")
    assert store.record_consent(stop, "s") is True
    store.set_opt_out("c1", "+1555", None)  # (simulate the opt-out write being lost)
    assert store.record_consent(stop, "s") is False  # Twilio's retry: a duplicate...
    assert store.opted_out("c1", "+1555")  # ...that still applies the opt-out


def test_delivery_status_moves_forward_only_and_early_reports_are_kept(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    job = store.claim("w", 30)
    (part,) = store.parts(job, ["x"], "+1555")
    store.begin_part(job, part, 1, 100)
    assert store.record_status("c1", "SMx", "failed", "Twilio 30006", STATUS_RANK) is False  # before its Sid
    store.part_sent(job, part, "SMx", "queued")
    row = store.recent(1)[0]
    assert (row["status"], row["error"]) == ("failed", "Twilio 30006")
    assert store.record_status("c1", "SMx", "read", None, STATUS_RANK) is False  # read only after delivered
    assert store.record_status("c1", "SMx", "sent", None, STATUS_RANK) is False
    assert store.record_status("other-channel", "SMx", "delivered", None, STATUS_RANK) is False


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
            stores[n % 4].complete(job)

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
        results.append(stores[i % 4].accept_inbound(msg("SMdup"), "s")[0])

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["duplicate"] * 7 + ["queued"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_synchronous_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        Store(tmp_path / "s.db", "OFF")


def test_consent_keywords_and_rate_limited_messages_are_not_history(tmp_path):
    store = Store(tmp_path / "s.db")
    store.record_consent(msg("k1", "START", intent="opt_in"), "s")
    store.accept_inbound(msg("m1", "real"), "s", max_per_hour=5)
    store.accept_inbound(msg("m2", "again"), "s", max_per_hour=1)  # rate-limited
    store.accept_inbound(msg("m3", "now"), "s")
    first = store.claim("w", 30)
    store.complete(first)
    last = store.claim("w", 30)
    assert [t.text for t in store.history("s", current_id=last.inbound_id)] == ["real"]


def test_the_queries_of_every_webhook_and_reply_use_indexes(tmp_path):
    """No full scan of the message log on the hot path: it must not slow down as history grows."""
    store = Store(tmp_path / "s.db")
    db = store._conn()

    def plan(sql, params):
        return " | ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))

    # the index alone: no table row read for each message the hourly limit counts (newer SQLite
    # finds the partial index covering without `direction` in it; older ones need the column)
    hourly = plan(HOURLY_COUNT, ("c", "+1555", 0.0, 60))
    assert "USING COVERING INDEX messages_from_sender" in hourly, hourly
    assert "direction" in {row[2] for row in db.execute("PRAGMA index_info(messages_from_sender)")}
    history = plan(HISTORY, ("s", 1e9, 1e9, 10, 20))  # (a range of the index, in its order: no sort)
    assert "USING INDEX messages_in_turn_order (session_key=? AND <expr><?)" in history, history
    assert "TEMP B-TREE" not in history, history
    status = plan("SELECT id FROM messages WHERE provider_id = ? AND direction = 'out'", ("SM1",))
    assert "messages_by_provider_id" in status, status


def _open_and_write(path, barrier, n):
    barrier.wait(10)
    Store(path).accept_inbound(msg(f"p{n}"), f"s{n}")


def test_many_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path):
    """gunicorn starts its workers together on a fresh data folder: none may fail to boot."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(30):  # the race is narrow: without the retry, ~1 round in 8 failed here
        path = tmp_path / f"fresh{round_}.db"
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_and_write, args=(path, barrier, n)) for n in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 6, f"round {round_}"
        assert len(Store(path).recent(100)) == 6


def test_concurrent_accepts_are_committed_together_each_once_and_each_before_returning(tmp_path):
    import threading

    store = Store(tmp_path / "s.db")
    results, errors, sizes = {}, [], []
    start = threading.Barrier(16)
    commit = store._commit_batch
    store._commit_batch = lambda batch: (sizes.append(len(batch)), commit(batch))

    def webhook(n):
        start.wait(10)
        for i in range(10):
            sid = f"m{n}-{i}"
            try:
                results[sid] = store.accept_inbound(msg(sid), f"s{n}", delivery_key=f"k{sid}")
                # Committed before it returned: another connection sees it at once.
                seen = Store(tmp_path / "s.db")._conn().execute(
                    "SELECT COUNT(*) FROM messages WHERE provider_id = ?", (sid,)).fetchone()[0]
                assert seen == 1
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=webhook, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 160 and {r[0] for r in results.values()} == {"queued"}
    assert len({r[1] for r in results.values()}) == 160  # distinct rows
    assert store.job_states() == {"queued": 160}
    assert sum(sizes) == 160 and max(sizes) > 1, sizes  # some were committed together
    assert store.accept_inbound(msg("m3-3"), "s3") == ("duplicate", None)


def test_a_failing_accept_in_a_group_commit_loses_only_itself(tmp_path):
    store = Store(tmp_path / "s.db")
    bad = msg("bad")
    object.__setattr__(bad, "metadata", {"not": object()})  # cannot be stored as JSON
    from sophon_core.store import _Pending

    good, broken = _Pending((msg("good"), "s", None, None)), _Pending((bad, "t", None, None))
    with store._write_lock:
        store._commit_batch([good, broken])
    assert good.result[0] == "queued" and good.error is None
    assert isinstance(broken.error, TypeError) and broken.result is None
    assert [m["provider_id"] for m in store.recent(10)] == ["good"]
    assert store.job_states() == {"queued": 1}


def test_the_last_parts_id_and_the_jobs_end_are_one_transaction(tmp_path):
    store = Store(tmp_path / "s.db")
    store.accept_inbound(msg("m1"), "s")
    job = store.claim("w", 30)
    (part,) = store.parts(job, ["answer"], "+1555", reply="answer")
    assert store.begin_part(job, part, 1, 100) == "ok"
    assert store.part_sent(job, part, "SM1", "queued", finish=True) is True
    assert store.job_states() == {"done": 1}
    assert store.recent(1)[0]["provider_id"] == "SM1"
    # A runner whose lease was taken: the part is recorded, the job is not ended by it.
    store.accept_inbound(msg("m2"), "t")
    stale = store.claim("dead", lease=0.1)
    (part2,) = store.parts(stale, ["late"], "+1555", reply="late")
    time.sleep(0.2)
    live = store.claim("live", 30)
    assert live.reply == "late"  # the reply was saved with the parts
    assert store.part_sent(stale, part2, "SM2", "queued", finish=True) is False
    assert store.recent(1)[0]["provider_id"] == "SM2"
    assert store.job_states() == {"done": 1, "running": 1}


def test_old_message_ids_webhook_keys_and_unmatched_delivery_reports_are_pruned_in_batches(tmp_path, monkeypatch):
    import sophon_core.store as store_mod

    monkeypatch.setattr(store_mod, "PRUNE_BATCH", 5)  # 12 old keys: three transactions
    store = Store(tmp_path / "s.db")
    for i in range(13):
        assert store.accept_inbound(msg(f"m{i}"), "s", delivery_key=f"sms:k{i}")[0] == "queued"
    store.record_status("c1", "SMold", "failed", None, STATUS_RANK)  # reports whose message never came
    store.record_status("c1", "SMnew", "sent", None, STATUS_RANK)
    now = time.time()
    old = now - store_mod.KEEP_KEYS_SECONDS - 60
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE deliveries SET at = ? WHERE key != 'sms:k12'", (old,))
        db.execute("UPDATE inbound_ids SET at = ? WHERE provider_id NOT IN ('m11', 'm12')", (old,))
        db.execute("UPDATE early_status SET at = ? WHERE provider_id = 'SMold'", (old,))

    assert store.prune(now) == {"inbound_ids": 11, "deliveries": 12, "early_status": 1}
    assert store.prune(now) == {"inbound_ids": 0, "deliveries": 0, "early_status": 0}
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT key FROM deliveries").fetchall() == [("sms:k12",)]
        assert db.execute("SELECT provider_id FROM inbound_ids ORDER BY 1").fetchall() == [("m11",), ("m12",)]
        assert db.execute("SELECT provider_id FROM early_status").fetchall() == [("SMnew",)]
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 13  # the log is kept whole
    assert store.accept_inbound(msg("m12"), "s", delivery_key="sms:k12") == ("duplicate", None)
    # a pruned key's message delivered again is still recognised by its id while that is kept
    assert store.accept_inbound(msg("m11"), "s", delivery_key="sms:k11") == ("duplicate", None)
    # after two days a message delivered again is a new one (Twilio retries within seconds)
    assert store.accept_inbound(msg("m3"), "s", delivery_key="sms:k3")[0] == "queued"
    assert store.accept_inbound(msg("m3"), "s", delivery_key="sms:k3b") == ("duplicate", None)


def test_a_store_with_the_old_unique_index_keeps_recent_ids_and_drops_the_index(tmp_path):
    """Stores made before ``inbound_ids`` had a unique index on (channel, provider id): opening
    one copies the ids of the last KEEP_KEYS_SECONDS into ``inbound_ids`` and drops the index,
    so a message Twilio delivers again across the upgrade is still a duplicate."""
    import sophon_core.store as store_mod

    path = tmp_path / "s.db"
    store = Store(path)
    assert store.accept_inbound(msg("recent"), "s")[0] == "queued"
    assert store.accept_inbound(msg("old"), "s")[0] == "queued"
    with sqlite3.connect(path) as db:  # what the older version had and wrote
        db.execute("DELETE FROM inbound_ids")
        db.execute("UPDATE messages SET created_at = ? WHERE provider_id = 'old'",
                   (time.time() - store_mod.KEEP_KEYS_SECONDS - 60,))
        db.execute("CREATE UNIQUE INDEX messages_inbound_once ON messages (channel_id, provider_id)"
                   " WHERE direction = 'in'")
    store._conn().close()
    upgraded = Store(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'messages_inbound_once'").fetchall() == []
        assert db.execute("SELECT provider_id FROM inbound_ids").fetchall() == [("recent",)]
    assert upgraded.accept_inbound(msg("recent"), "s") == ("duplicate", None)
    assert Store(path).accept_inbound(msg("new"), "s")[0] == "queued"  # (opened again: nothing to do)


def test_a_store_of_an_older_version_gets_the_covering_sender_index(tmp_path):
    """Stores made before messages_from_sender had messages_by_sender (no ``direction``): it is
    replaced when the store is opened, and the hourly limit still counts what was stored."""
    path = tmp_path / "s.db"
    store = Store(path)
    for n in range(3):
        assert store.accept_inbound(msg(f"m{n}"), "s", max_per_hour=10)[0] == "queued"
    with sqlite3.connect(path) as db:  # what the older version had
        db.execute("DROP INDEX messages_from_sender")
        db.execute("CREATE INDEX messages_by_sender ON messages (channel_id, peer, created_at) WHERE direction = 'in'")
    store._conn().close()
    upgraded = Store(path)
    with sqlite3.connect(path) as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "messages_from_sender" in names and "messages_by_sender" not in names, names
    assert upgraded.accept_inbound(msg("m3"), "s", max_per_hour=4)[0] == "queued"
    assert upgraded.accept_inbound(msg("m4"), "s", max_per_hour=4)[0] == "rate-limited"  # 4 in the hour


def test_the_pipeline_prunes_old_webhook_keys(make_runtime):
    import sophon_core.store as store_mod
    from dummy_channel import dummy_channel

    rt = make_runtime([dummy_channel()])
    rt.store.accept_inbound(msg("m1"), "s", delivery_key="dummy:k1")
    rt.store.accept_inbound(msg("m2"), "s", delivery_key="dummy:k2")
    with sqlite3.connect(rt.store.path) as db:
        db.execute("UPDATE deliveries SET at = ? WHERE key = 'dummy:k1'",
                   (time.time() - store_mod.KEEP_KEYS_SECONDS - 1,))
    assert rt.pipeline._prune_store() == {"inbound_ids": 0, "deliveries": 1, "early_status": 0}
    assert rt.pipeline._prune_store() == {"inbound_ids": 0, "deliveries": 0, "early_status": 0}
