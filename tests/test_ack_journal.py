"""The acknowledgement's journal (ack_journal.py): webhooks acknowledged once journaled,
moved into the store by a thread of the worker, and a dead worker's journal moved once.

The real gunicorn worker killed with journaled, unmoved messages is in the SMS plugin's
tests (plugins/sms_twilio/tests/test_crash.py), next to the other crash tests.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time

from dummy_channel import dummy_channel
from sophon_core import ack_journal, metrics
from sophon_core.journal import encode, read_records
from sophon_core.models import InboundMessage
from store_spies import as_older_version, index_names

JOIN = 10.0


def dmsg(mid, sender="dummy:ann", text="hi", **kw):
    return InboundMessage("d1", mid, sender, "dummy:bob", text, **kw)


def stored(path) -> list[tuple]:
    """(provider id, text, has a job) of every inbound message, in store order."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT m.provider_id, m.text, j.id IS NOT NULL FROM messages m"
                          " LEFT JOIN jobs j ON j.inbound_id = m.id WHERE m.direction = 'in' ORDER BY m.id").fetchall()


def journal_dir(rt):
    return rt.settings.data_dir / "journal"


def journal_files(rt):
    return sorted(journal_dir(rt).glob("*.log"))


def inbound_count(channel, outcome) -> float:
    return metrics.INBOUND.labels(channel, outcome)._value.get()


def test_a_journaled_message_is_on_disk_when_accept_returns_and_in_the_store_once_moved(make_runtime):
    rt = make_runtime([dummy_channel()])
    assert rt.pipeline.mover is not None  # the default
    assert rt.pipeline.accept("dummy", [dmsg("j1", text="one"), dmsg("j2", text="two")]) == 2
    (path,) = journal_files(rt)
    assert [r["m"]["text"] for _, r in read_records(path).records] == ["one", "two"]
    assert stored(rt.store.path) == []  # not moved yet (the mover thread was never started here)
    rt.pipeline.settle()
    assert stored(rt.store.path) == [("j1", "one", 1), ("j2", "two", 1)]
    assert read_records(path).records == []  # rewound once moved


def test_the_mover_thread_moves_within_moments_and_reports_each_outcome(make_runtime, caplog):
    rt = make_runtime([dummy_channel(limits={"inboundPerSenderPerHour": 2})])
    rt.pipeline.start()
    before = {o: inbound_count("d1", o) for o in ("queued", "duplicate", "rate_limited")}
    caplog.set_level(logging.INFO, logger="sophon.pipeline")
    # a duplicate by provider id, and a third message of one sender over a limit of 2 an hour
    rt.pipeline.accept("dummy", [dmsg("r1"), dmsg("r1"), dmsg("r2"), dmsg("r3")])
    deadline = time.monotonic() + JOIN
    while inbound_count("d1", "rate_limited") == before["rate_limited"] and time.monotonic() < deadline:
        time.sleep(0.02)  # (the outcomes are reported once the batch is synced, the last one last)
    assert stored(rt.store.path) == [("r1", "hi", 1), ("r2", "hi", 1), ("r3", "hi", 0)]
    after = {o: inbound_count("d1", o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"queued": 2, "duplicate": 1, "rate_limited": 1}
    assert "duplicate delivery of r1 on d1 ignored" in caplog.text
    assert "r3 not answered" in caplog.text


def test_shutdown_moves_what_is_journaled_and_removes_the_journal(make_runtime):
    rt = make_runtime([dummy_channel()])
    rt.pipeline.start()
    rt.pipeline.accept("dummy", [dmsg(f"s{n}") for n in range(5)])
    rt.close()
    assert len(stored(rt.store.path)) == 5
    assert journal_files(rt) == []


def test_a_dead_workers_journal_is_moved_once_even_the_messages_it_had_moved(make_runtime, caplog):
    """A worker that died after storing its journal's messages but before cutting the
    journal back: the replay stores none of them again, a message without a provider id
    either (its journal key)."""
    rt = make_runtime([dummy_channel()])
    mover = rt.pipeline.mover
    # this worker journals three messages, one of them without a provider id
    rt.pipeline.accept("dummy", [dmsg("k1", text="one"), dmsg(None, text="keyless"), dmsg("k3", text="three")])
    journal = mover._current()
    records = [r for _, r in journal.take()]
    assert records[1]["k"].startswith("journal:") and records[0]["k"] is None
    # ... stores two of them (the mover's transaction), then "dies": its file is left whole
    dead = [(m, r["s"], r["l"], r["k"]) for m, r in
            ((ack_journal.message_from_dict(r["m"]), r) for r in records[:2])]
    rt.store.accept_batch(dead)
    journal.close()  # (releases the lock, as the kernel does for a dead process; nothing was marked moved)
    mover._journal = None
    assert len(journal_files(rt)) == 1

    caplog.set_level(logging.INFO, logger="sophon.journal")
    dup_before = inbound_count("d1", "duplicate")
    assert mover.replay_orphans() == 3
    assert stored(rt.store.path) == [("k1", "one", 1), (None, "keyless", 1), ("k3", "three", 1)]
    assert journal_files(rt) == []
    assert "moved 3 message(s)" in caplog.text and "(1 new to the store)" in caplog.text
    assert inbound_count("d1", "duplicate") == dup_before  # a replay's duplicates are not webhook duplicates
    assert mover.replay_orphans() == 0


def test_a_torn_last_write_is_skipped_and_the_whole_records_before_it_are_moved(make_runtime, caplog):
    rt = make_runtime([dummy_channel()])
    folder = journal_dir(rt)
    folder.mkdir(parents=True)
    good = [ack_journal.record(dmsg(f"t{n}", text=f"torn {n}"), "agent:default:main", None, None, time.time())
            for n in range(2)]
    torn = encode(3, ack_journal.record(dmsg("t3"), "agent:default:main", None, None, time.time()))
    (folder / "999999-1.log").write_bytes(encode(1, good[0]) + encode(2, good[1]) + torn[: len(torn) // 2])
    caplog.set_level(logging.INFO, logger="sophon.journal")
    rt.pipeline.mover.replay_orphans()
    assert [(pid, text) for pid, text, _ in stored(rt.store.path)] == [("t0", "torn 0"), ("t1", "torn 1")]
    assert f"its last {len(torn) // 2} bytes are an unfinished write, never acknowledged" in caplog.text
    assert not (folder / "999999-1.log").exists()


def test_a_message_the_store_refuses_is_tried_again_then_kept_aside_and_the_rest_is_stored(make_runtime,
                                                                                           caplog):
    rt = make_runtime([dummy_channel()])
    mover = rt.pipeline.mover
    ok = ack_journal.record(dmsg("ok1", text="fine"), "agent:default:main", None, None, time.time())
    bad = ack_journal.record(dmsg("bad1"), "agent:default:main", None, None, time.time())
    bad["m"]["text"] = {"not": "text"}  # sqlite cannot bind a dict
    mover._current().append_all([ok, bad])
    caplog.set_level(logging.WARNING, logger="sophon.journal")
    rejected = journal_dir(rt) / ack_journal.REJECTED
    rt.pipeline.settle()  # (tries it twice: with its batch, then alone)
    assert stored(rt.store.path) == [("ok1", "fine", 1)]
    assert "acknowledged message bad1 on d1 could not be stored" in caplog.text and "trying again" in caplog.text
    assert not rejected.exists() and [r["m"]["provider_message_id"] for _, r in
                                      read_records(mover._journal.path).records] == ["ok1", "bad1"]
    for _ in range(ack_journal.MAX_TRIES):
        rt.pipeline.settle()
    (kept,) = [r for _, r in read_records(rejected).records]
    assert kept["m"]["provider_message_id"] == "bad1" and "error" in kept
    assert "kept in" in caplog.text
    assert read_records(mover._journal.path).records == []  # moved: not tried again
    assert stored(rt.store.path) == [("ok1", "fine", 1)]


def test_a_record_that_cannot_be_kept_aside_stays_journaled_until_it_can(make_runtime, caplog):
    """The rejected file cannot be written (here: a folder in its place): the unreadable records
    and the refused message stay in the journal, tried again; the rest of their batch is stored."""
    rt = make_runtime([dummy_channel()])
    mover = rt.pipeline.mover
    bad = ack_journal.record(dmsg("bad2"), "agent:default:main", None, None, time.time())
    bad["m"]["text"] = {"not": "text"}
    mover._current().append_all([ack_journal.record(dmsg("ok2"), "agent:default:main", None, None, time.time()),
                                 {"m": "another version"}, ["not", "a", "record"], bad])
    blocker = journal_dir(rt) / ack_journal.REJECTED
    blocker.mkdir()
    caplog.set_level(logging.WARNING, logger="sophon.journal")
    for _ in range(ack_journal.MAX_TRIES + 1):
        rt.pipeline.settle()
    assert [p for p, _, _ in stored(rt.store.path)] == ["ok2"]
    assert "could not keep acknowledged message bad2 on d1 aside" in caplog.text
    assert [r for _, r in read_records(mover._journal.path).records][-3:] == [{"m": "another version"},
                                                                           ["not", "a", "record"], bad]
    # in sequence order, whatever kept them (the journal counts as moved up to just before the first)
    again, _ = mover._move([(7, bad), (8, {"m": "another version"})], source="test")
    assert [seq for seq, _ in again] == [7, 8]
    blocker.rmdir()
    rt.pipeline.settle()
    assert read_records(mover._journal.path).records == []
    assert [r.get("m", r.get("record")) for _, r in read_records(blocker).records] == [
        "another version", ["not", "a", "record"], bad["m"]]
    assert [p for p, _, _ in stored(rt.store.path)] == ["ok2"]


def test_a_message_refused_once_is_stored_on_the_next_try(make_runtime, monkeypatch):
    rt = make_runtime([dummy_channel()])
    real, failed = rt.store._accept_one, []

    def once(db, msg, *args):
        if msg.provider_message_id == "a2" and len(failed) < 2:  # (the batch, then a2 under its savepoint)
            failed.append(msg)
            raise sqlite3.OperationalError("disk is full")
        return real(db, msg, *args)

    monkeypatch.setattr(rt.store, "_accept_one", once)
    rt.pipeline.accept("dummy", [dmsg("a1"), dmsg("a2"), dmsg("a3")])
    rt.pipeline.settle()
    rt.pipeline.settle()
    assert failed and [p for p, _, _ in stored(rt.store.path)] == ["a1", "a3", "a2"]
    assert not (journal_dir(rt) / ack_journal.REJECTED).exists()


def test_a_store_failure_leaves_the_messages_journaled_and_they_move_once_it_recovers(make_runtime, monkeypatch):
    rt = make_runtime([dummy_channel()])
    rt.pipeline.accept("dummy", [dmsg("f1"), dmsg("f2")])
    real = rt.store.accept_batch

    def failing(items):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(rt.store, "accept_batch", failing)
    try:
        rt.pipeline.settle()
    except sqlite3.OperationalError:
        pass
    else:
        raise AssertionError("settle should have failed")
    assert stored(rt.store.path) == []
    monkeypatch.setattr(rt.store, "accept_batch", real)
    rt.pipeline.settle()  # the messages in hand, tried again
    assert stored(rt.store.path) == [("f1", "hi", 1), ("f2", "hi", 1)]


def test_with_the_journal_off_a_webhook_stores_its_message_itself(make_runtime):
    rt = make_runtime([dummy_channel()], env={"SOPHON_ACK_JOURNAL": "off"})
    assert rt.pipeline.mover is None
    assert rt.pipeline.accept("dummy", [dmsg("o1")]) == 1
    assert stored(rt.store.path) == [("o1", "hi", 1)]
    assert not journal_dir(rt).exists()


def test_under_normal_sync_the_journal_is_not_used(make_runtime):
    rt = make_runtime([dummy_channel()], env={"SOPHON_SQLITE_SYNC": "NORMAL"})
    assert rt.pipeline.mover is None
    rt.pipeline.accept("dummy", [dmsg("n1")])
    assert stored(rt.store.path) == [("n1", "hi", 1)]


def test_a_forked_worker_journals_to_a_file_of_its_own(make_runtime, tmp_path):
    rt = make_runtime([dummy_channel()])
    # (as gunicorn's master: no thread started before the fork, so the journal alone, not accept)
    rt.pipeline.mover.append([(dmsg("p1"), "agent:default:main", None, None)])
    parent_file = rt.pipeline.mover._journal.path
    pid = os.fork()
    if pid == 0:  # the child: its journal is a new file with its pid, not the parent's
        code = 1
        try:
            rt.pipeline.accept("dummy", [dmsg("c1")])
            mine = rt.pipeline.mover._journal.path
            code = 0 if mine != parent_file and mine.name.startswith(f"{os.getpid()}-") else 2
        except BaseException as exc:
            (tmp_path / "child-error").write_text(repr(exc))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    error = (tmp_path / "child-error").read_text() if (tmp_path / "child-error").exists() else ""
    assert os.WEXITSTATUS(status) == 0, error
    rt.pipeline.mover.replay_orphans()  # the child's file (it died without moving it)
    rt.pipeline.settle()
    assert sorted(p for p, _, _ in stored(rt.store.path)) == ["c1", "p1"]


# --- order in a session, and stores made before acked_at ------------------------------------

def test_a_sessions_jobs_run_in_acknowledgement_order_and_a_late_older_one_waits_for_the_running_one(tmp_path):
    from sophon_core.store import Store

    store = Store(tmp_path / "s.db")
    now = time.time() - 10
    # stored in the order b, a (two workers' moves), acknowledged in the order a, b
    store.accept_batch([(dmsg("b"), "s", None, None, now + 2, now + 2),
                        (dmsg("a"), "s", None, None, now + 1, now + 1)])
    first = store.claim("w", 30)
    assert first.message.provider_message_id == "a"  # the older acknowledgement, not the lower id
    assert store.claim("w", 30) is None  # one at a time per session
    store.complete(first)
    second = store.claim("w", 30)
    assert second.message.provider_message_id == "b"
    # an older message stored late (moved from a dead worker's journal) while b runs: it waits for b
    store.accept_batch([(dmsg("late"), "s", None, None, now, now)])
    assert store.claim("w", 30) is None
    store.complete(second)
    assert store.claim("w", 30).message.provider_message_id == "late"


def test_a_journaled_job_waits_for_the_order_hold(make_runtime):
    rt = make_runtime([dummy_channel()])
    rt.pipeline.accept("dummy", [dmsg("h1")])
    rt.pipeline.settle()
    rt.pipeline.shutdown()  # (its runners would take the job once due: the claims below are the test's)
    (due,) = [r[0] for r in sqlite3.connect(rt.store.path).execute("SELECT not_before - acked_at FROM jobs")]
    assert abs(due - ack_journal.ORDER_HOLD) < 1e-6
    assert rt.store.claim("w", 30) is None  # not yet: an older message of another worker may still come
    time.sleep(ack_journal.ORDER_HOLD)
    assert rt.store.claim("w", 30).message.provider_message_id == "h1"


def test_an_idle_runner_waits_until_the_held_job_is_due_not_a_whole_poll(make_runtime):
    from sophon_core.pipeline import IDLE_POLL

    rt = make_runtime([dummy_channel()])
    assert rt.store.next_due() is None and rt.pipeline._idle_wait(rt.store) == IDLE_POLL  # nothing queued
    rt.pipeline.accept("dummy", [dmsg("w1")])
    rt.pipeline.settle()
    rt.pipeline.shutdown()  # (its runners would take the job once due)
    (due,) = [r[0] for r in sqlite3.connect(rt.store.path).execute("SELECT not_before FROM jobs")]
    assert rt.store.next_due() == due
    wait = rt.pipeline._idle_wait(rt.store)
    assert 0 < wait <= due - time.time() + 0.01 and wait < ack_journal.ORDER_HOLD < IDLE_POLL
    time.sleep(max(0.0, due - time.time()) + 0.01)
    assert rt.pipeline._idle_wait(rt.store) == IDLE_POLL  # due: a claim that found nothing was held back by its session
    job = rt.store.claim("w", 30)
    assert job.message.provider_message_id == "w1"
    assert rt.store.next_due() is None  # running, not queued


def test_a_store_made_before_acked_at_gets_the_column_and_the_new_index_and_its_jobs_run_first(tmp_path):
    from sophon_core.store import Store

    path = tmp_path / "old.db"
    Store(path).accept_inbound(dmsg("old"), "s")
    as_older_version(path, table="jobs", column="acked_at", index="jobs_in_session_order",
                     old_index="CREATE INDEX jobs_by_session ON jobs (session_key, id)"
                               " WHERE state IN ('queued', 'running')")
    store = Store(path)
    with sqlite3.connect(path) as db:
        assert "acked_at" in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    indexes = index_names(path, "jobs")
    assert "jobs_in_session_order" in indexes and "jobs_by_session" not in indexes
    store.accept_batch([(dmsg("new"), "s", None, None, time.time() - 5, time.time() - 5)])
    assert store.claim("w", 30).message.provider_message_id == "old"  # (NULL acked_at: first)
    Store(path)  # a second opener (another worker) finds it done


def test_with_the_journal_off_a_dead_workers_journal_is_still_moved(make_runtime):
    rt = make_runtime([dummy_channel()], env={"SOPHON_ACK_JOURNAL": "off"})
    folder = journal_dir(rt)
    folder.mkdir(parents=True)
    left = ack_journal.record(dmsg("left1", text="left behind"), "agent:default:main", None, None, time.time())
    (folder / "999998-1.log").write_bytes(encode(1, left))  # (a worker that died with the journal on)
    rt.pipeline.start()
    deadline = time.monotonic() + JOIN
    while (folder / "999998-1.log").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # (deleted once its messages are stored and synced: the last step)
    assert not (folder / "999998-1.log").exists()
    assert [(p, t) for p, t, _ in stored(rt.store.path)] == [("left1", "left behind")]
