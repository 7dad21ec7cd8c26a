"""Group commit (leader/follower), per-batch usage counters, job payloads, background
checkpoints and per-message webhook idempotency keys. Real files, threads; no timing is
asserted beyond generous deadlines (only what happened)."""
from __future__ import annotations

import json
import sqlite3
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict

import pytest

from dummy_channel import dummy_channel
from sophon_core import store as store_mod
from sophon_core.models import Attachment, DroppedAttachment, InboundMessage
from sophon_core.store import AUTO_CHECKPOINT_PAGES, Store, message_json

from store_spies import JOIN, FsyncLog, run_threads, spy_batches


def msg(mid, channel="c1", text="hi", sender="+1555", **kw):
    return InboundMessage(channel, mid, sender, "+1000", text, **kw)


def inbound_rows(path):
    """{provider_id: number of jobs} of every inbound message, read on a connection of our own."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT m.provider_id, COUNT(j.id) FROM messages m LEFT JOIN jobs j"
                          " ON j.inbound_id = m.id WHERE m.direction = 'in' GROUP BY m.id").fetchall()
    finally:
        db.close()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), f"a message was stored twice: {ids}"
    return dict(rows)


def usage_of(store, channel):
    """Today's counters of ``channel`` (the store's UTC day)."""
    got = {k: v for k, v in store.usage().items() if k[0] == channel}
    assert len(got) <= 1, got  # a test runs well within one day (bar a midnight crossing)
    return next(iter(got.values()), {})


def wait_for(cond, timeout=JOIN, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# --- 1. many concurrent accepts -------------------------------------------------------

def test_many_concurrent_accepts_are_each_stored_once_with_one_job_and_counted(tmp_path):
    store = Store(tmp_path / "s.db")
    n = 32
    msgs = [msg(f"m{i}", units=1 + i % 3) for i in range(n)]
    results = run_threads([lambda m=m: store.accept_inbound(m, "s") for m in msgs])
    assert sorted(r[0] for r in results.values()) == ["ok"] * n, results
    assert {r[1][0] for r in results.values()} == {"queued"}
    assert len({r[1][1] for r in results.values()}) == n  # each its own row
    assert inbound_rows(store.path) == {f"m{i}": 1 for i in range(n)}
    assert store.job_states() == {"queued": n}
    assert usage_of(store, "c1") == {"messages_in": n, "units_in": sum(m.units for m in msgs)}
    # all of them again: duplicates, nothing added
    again = run_threads([lambda m=m: store.accept_inbound(m, "s") for m in msgs])
    assert {r[1] for r in again.values()} == {("duplicate", None)}
    assert store.job_states() == {"queued": n}
    assert usage_of(store, "c1")["messages_in"] == n


@contextmanager
def held_write_lock(store):
    """Hold the store's write lock from the test thread (as another writer would)."""
    with store._locked():
        yield


@pytest.mark.parametrize("how", ["raise-after-insert", "unserializable-payload", "no-text"])
def test_a_message_failing_inside_its_savepoint_fails_only_its_own_call(tmp_path, monkeypatch, how):
    store = Store(tmp_path / "s.db")
    real_insert = store._insert_inbound
    if how == "raise-after-insert":  # the row is written, then the item fails: its savepoint must undo it
        def insert(db, m, session_key, status, at):
            row = real_insert(db, m, session_key, status, at)
            if m.provider_message_id == "bad":
                raise sqlite3.IntegrityError(f"refusing {m.provider_message_id} (test)")
            return row
        monkeypatch.setattr(store, "_insert_inbound", insert)
        bad, error = msg("bad", units=7), sqlite3.IntegrityError
    elif how == "unserializable-payload":  # the message row is written, then its job's payload cannot be
        bad, error = msg("bad", units=7, attachments=(Attachment("image/png", data=b"\x89PNG"),)), TypeError
    else:  # a plugin's bug: the message has no text (NOT NULL), which must fail it, not pass for a duplicate
        bad, error = msg("bad", units=7, text=None), sqlite3.IntegrityError
    add_usage_calls = []
    real_add_usage = store._add_usage
    monkeypatch.setattr(store, "_add_usage",
                        lambda db, ch, counters: (add_usage_calls.append((ch, dict(counters))),
                                                  real_add_usage(db, ch, counters))[1])
    batches = spy_batches(store, monkeypatch)
    good = [msg(f"g{i}", channel="c1" if i % 2 else "c2", units=2) for i in range(15)]
    everyone = [*good[:7], bad, *good[7:]]

    # Deterministic batching: one accept leads and waits for the lock we hold; the rest queue
    # up behind it and are committed together, the failing one among them, as one batch.
    results: dict[str, tuple] = {}

    def accept(m):
        try:
            results[m.provider_message_id] = ("ok", store.accept_inbound(m, "s"))
        except Exception as exc:
            results[m.provider_message_id] = ("error", exc)

    with held_write_lock(store):
        first = threading.Thread(target=accept, args=(msg("lead"),), daemon=True)
        first.start()
        wait_for(lambda: store._committing, what="a leader")
        rest = [threading.Thread(target=accept, args=(m,), daemon=True) for m in everyone]
        for t in rest:
            t.start()
        wait_for(lambda: len(store._pending) == len(everyone), what="the followers to queue")
    for t in [first, *rest]:
        t.join(JOIN)
        assert not t.is_alive(), "an accept never returned"

    assert len(batches) == 2 and batches[0] == ["lead"], batches
    assert sorted(batches[1]) == sorted(m.provider_message_id for m in everyone), batches
    kind, exc = results.pop("bad")
    assert kind == "error" and isinstance(exc, error), (kind, exc)
    assert {k: v[0] for k, v in results.items()} == {k: "ok" for k in results}
    assert {v[1][0] for v in results.values()} == {"queued"}
    stored = inbound_rows(store.path)
    assert "bad" not in stored
    assert stored == {m.provider_message_id: 1 for m in [msg("lead"), *good]}
    assert store.job_states() == {"queued": len(good) + 1}
    c1 = [m for m in good if m.channel_id == "c1"]
    c2 = [m for m in good if m.channel_id == "c2"]
    assert usage_of(store, "c1") == {"messages_in": len(c1) + 1, "units_in": 2 * len(c1) + 1}
    assert usage_of(store, "c2") == {"messages_in": len(c2), "units_in": 2 * len(c2)}
    # counters are added once per channel per batch, at its end: lead's batch (c1), then c1 and c2
    assert sorted(ch for ch, _ in add_usage_calls) == ["c1", "c1", "c2"], add_usage_calls
    # the failed message can be accepted later (nothing of it was kept)
    monkeypatch.undo()
    assert store.accept_inbound(msg("bad", units=7), "s")[0] == "queued"
    assert usage_of(store, "c1")["units_in"] == 2 * len(c1) + 1 + 7


# --- 2. the write lock failing --------------------------------------------------------

def test_when_the_lock_fails_every_call_of_the_batch_returns_and_those_that_raised_stored_nothing(
        tmp_path, monkeypatch):
    store = Store(tmp_path / "s.db")
    real_flock = store_mod.fcntl.flock
    failures = {"left": 3, "raised": 0}
    guard = threading.Lock()

    def flock(fd, op):
        if op == store_mod.fcntl.LOCK_EX:
            with guard:
                fail = failures["left"] > 0
                if fail:
                    failures["left"] -= 1
                    failures["raised"] += 1
            if fail:
                time.sleep(0.03)  # let followers pile up behind the failing leader
                raise OSError(5, "flock failed (test)")
        return real_flock(fd, op)

    monkeypatch.setattr(store_mod.fcntl, "flock", flock)
    n = 16
    msgs = [msg(f"m{i}") for i in range(n)]
    results = run_threads([lambda m=m: store.accept_inbound(m, "s") for m in msgs])
    assert 1 <= failures["raised"] <= 3  # fewer when the failing batches took every call along
    raised = {msgs[i].provider_message_id for i, r in results.items() if r[0] == "error"}
    returned = {msgs[i].provider_message_id for i, r in results.items() if r[0] == "ok"}
    assert len(raised) + len(returned) == n
    assert raised, "no accept saw the lock fail"
    assert all(isinstance(r[1], OSError) for r in results.values() if r[0] == "error"), results
    assert {r[1][0] for r in results.values() if r[0] == "ok"} <= {"queued"}
    stored = inbound_rows(store.path)
    assert set(stored) == returned and not (set(stored) & raised)
    assert usage_of(store, "c1").get("messages_in", 0) == len(returned)

    monkeypatch.undo()
    assert not store._committing and store._pending == []
    retry = run_threads([lambda m=m: store.accept_inbound(m, "s") for m in msgs])
    outcomes = {msgs[i].provider_message_id: r[1][0] for i, r in retry.items() if r[0] == "ok"}
    assert len(outcomes) == n, retry
    assert outcomes == {m: ("queued" if m in raised else "duplicate") for m in outcomes}
    assert inbound_rows(store.path) == {m.provider_message_id: 1 for m in msgs}
    assert usage_of(store, "c1")["messages_in"] == n


# --- 3. followers never take the write lock -------------------------------------------

def test_followers_wait_for_the_leader_and_never_take_the_write_lock(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.db")
    taken = []
    real_locked = store._locked

    @contextmanager
    def locked():
        taken.append(threading.current_thread().name)
        with real_locked():
            yield

    monkeypatch.setattr(store, "_locked", locked)
    batches = spy_batches(store, monkeypatch, delay=0.05)
    n = 32
    results = run_threads([lambda i=i: store.accept_inbound(msg(f"m{i}"), "s") for i in range(n)])
    assert {r[0] for r in results.values()} == {"ok"}
    assert sorted(sum(batches, [])) == sorted(f"m{i}" for i in range(n))  # each in exactly one batch
    assert len(taken) == len(batches), (taken, batches)  # one lock per batch: its leader's
    assert len(batches) <= n // 4, batches
    assert max(map(len, batches)) >= 4, batches
    assert len(inbound_rows(store.path)) == n


# --- 4. job payloads ------------------------------------------------------------------

MESSAGES = [
    msg("plain"),
    msg("full", text="héllo ☃", metadata={"ProfileName": "Ann", "FromCity": "Zürich"},
        dropped_attachments=(DroppedAttachment("video/mp4", "larger than 5 MB"), DroppedAttachment("image/gif")),
        attachments=(Attachment("image/png", url="https://x.test/m/1", filename="a.png", size=12),
                     Attachment("application/pdf", url="https://x.test/m/2", path="/tmp/x.pdf")),
        canned_reply="text only, please", units=3, received_at=1700000000.25),
    msg("stop", text="STOP", intent="opt_out", units=2),
    msg("empty-meta", metadata={}, canned_reply=""),
]


@pytest.mark.parametrize("m", MESSAGES, ids=lambda m: m.provider_message_id)
def test_message_json_is_what_asdict_gives(m):
    assert message_json(m) == json.dumps(asdict(m))


def test_a_claimed_job_carries_the_same_message(tmp_path):
    store = Store(tmp_path / "s.db")
    for i, m in enumerate(MESSAGES):  # each in a session of its own, so each can be claimed at once
        assert store.accept_inbound(m, f"s{i}")[0] == "queued"
    got = {}
    while (job := store.claim("w", 30)) is not None:
        got[job.message.provider_message_id] = job.message
    assert got == {m.provider_message_id: m for m in MESSAGES}
    payloads = sqlite3.connect(store.path).execute("SELECT payload FROM jobs ORDER BY id").fetchall()
    assert [p for (p,) in payloads] == [json.dumps(asdict(m)) for m in MESSAGES]


# --- 5. checkpoints -------------------------------------------------------------------

class CheckpointSpy:
    """Stands in for a store's connection: records what ``PRAGMA wal_checkpoint`` answered."""

    def __init__(self, db):
        self.db, self.results = db, []

    def execute(self, sql, *args):
        cur = self.db.execute(sql, *args)
        if "wal_checkpoint" not in sql:
            return cur
        spy = self

        class Rows:
            def fetchall(self):
                rows = cur.fetchall()
                spy.results.append(rows)
                return rows
        return Rows()


def test_commits_leave_the_log_to_the_background_checkpoint_which_copies_all_of_it(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.db", synchronous="NORMAL")
    db = store._conn()
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTO_CHECKPOINT_PAGES
    other = []  # a connection of another thread is set up the same way
    t = threading.Thread(target=lambda: other.append(store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()))
    t.start()
    t.join(JOIN)
    assert other == [(AUTO_CHECKPOINT_PAGES,)]

    page = db.execute("PRAGMA page_size").fetchone()[0]
    wal = tmp_path / "s.db-wal"
    frames = lambda: (wal.stat().st_size - 32) // (page + 24)  # noqa: E731 - WAL header, frame headers
    text = "x" * (4 * page)  # each message and its job's payload take several overflow pages
    i = 0
    while frames() < 2500:  # well past SQLite's default of 1000 pages, well short of ours
        store.accept_inbound(msg(f"m{i}", text=text), "s")
        i += 1
        assert i < 2000, "the log does not grow"
    db_size_before = (tmp_path / "s.db").stat().st_size

    spy = CheckpointSpy(db)
    monkeypatch.setattr(store, "_conn", lambda: spy)
    store.checkpoint()
    monkeypatch.undo()
    first, *rest = spy.results
    [(busy, log, done)] = first
    # nothing was checkpointed by the commits (the log holds every frame they wrote) ...
    assert log >= 2500 and log == frames(), (log, frames())
    # ... and the background checkpoint's first, passive pass copied all of it (no commit
    # came meanwhile: its second pass, in the write lock, found nothing left)
    assert busy == 0 and done == log
    assert rest == [[(0, log, log)]], rest
    assert (tmp_path / "s.db").stat().st_size > db_size_before + 2 * i * page
    assert len(inbound_rows(store.path)) == i


def log_restarts(path) -> int:
    """How many times the store's write-ahead log has started over: the checkpoint sequence
    number of the log's header (https://www.sqlite.org/fileformat2.html#walformat), which
    SQLite rewrites, one higher, each time a commit starts the log over."""
    with open(f"{path}-wal", "rb") as f:
        return struct.unpack(">I", f.read(16)[12:16])[0]


def test_a_checkpoint_lets_the_log_start_over_while_commits_keep_coming(tmp_path, monkeypatch):
    """Under a steady stream of commits a passive checkpoint never finds the log copied whole
    when the next write begins (commits append while it copies), so SQLite never starts the
    log over and it grows until a commit crosses AUTO_CHECKPOINT_PAGES. ``checkpoint``
    finishes the copy inside the write lock: the commit after it starts the log over."""
    monkeypatch.setattr(store_mod, "AUTO_CHECKPOINT_PAGES", 10**6)  # only our checkpoints copy the log
    store = Store(tmp_path / "s.db", synchronous="NORMAL")
    stop, written = threading.Event(), [0]

    def writer():
        while not stop.is_set():
            store.accept_inbound(msg(f"w{written[0]}", text="x" * 600), "s")
            written[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: written[0] >= 200, 10, "the writer to write")
        for n in range(1, 6):
            before = log_restarts(store.path)
            store.checkpoint()  # the writer's next commit starts the log over
            wait_for(lambda: log_restarts(store.path) > before, JOIN, f"the log to start over after checkpoint {n}")
            # a log to copy next time: commits after the restart (a fixed 50 ms was not always enough on
            # a slow disk: with no frame in the log the checkpoint has nothing to copy, and nothing starts over)
            mark = written[0]
            wait_for(lambda: written[0] >= mark + 20, JOIN, "commits after the restart")
    finally:
        stop.set()
        t.join(JOIN)
    assert len(inbound_rows(store.path)) == written[0]


def checkpointing_thread(rt, monkeypatch) -> str:
    """Start ``rt``'s pipeline; the name of the first thread that calls ``Store.checkpoint``."""
    called = threading.Event()
    threads = []
    real = rt.store.checkpoint

    def checkpoint():
        threads.append(threading.current_thread().name)
        real()
        called.set()

    monkeypatch.setattr(rt.store, "checkpoint", checkpoint)
    rt.pipeline.start()
    assert called.wait(10), "no thread of the pipeline called Store.checkpoint"
    return threads[0]


def test_the_pipeline_heartbeat_checkpoints_the_store(make_runtime, monkeypatch):
    rt = make_runtime([dummy_channel()])
    assert checkpointing_thread(rt, monkeypatch) == "sophon-lease"


# --- 6. webhook idempotency keys ------------------------------------------------------

def test_a_delivery_key_seen_before_makes_any_message_a_duplicate(tmp_path):
    store = Store(tmp_path / "s.db")
    assert store.accept_inbound(msg("m1"), "s", delivery_key="t:K1")[0] == "queued"
    assert store.accept_inbound(msg("m2"), "s", delivery_key="t:K1") == ("duplicate", None)
    assert store.accept_inbound(msg("m3"), "s", delivery_key="t:K2")[0] == "queued"
    assert store.accept_inbound(msg("m3"), "s", delivery_key="t:K3") == ("duplicate", None)  # same id
    assert inbound_rows(store.path) == {"m1": 1, "m3": 1}
    assert usage_of(store, "c1")["messages_in"] == 2


def dmsg(mid, sender="dummy:ann", text="hi", **kw):
    return InboundMessage("d1", mid, sender, "dummy:bob", text, **kw)


def deliveries(store):
    return {k for (k,) in sqlite3.connect(store.path).execute("SELECT key FROM deliveries")}


@pytest.mark.parametrize("journal", ["on", "off"])
def test_every_message_of_a_delivery_is_stored_once_and_a_redelivery_stores_none(make_runtime, journal):
    rt = make_runtime([dummy_channel()], env={"SOPHON_ACK_JOURNAL": journal})

    def accept(messages, key):
        n = rt.pipeline.accept("dummy", messages, delivery_key=key)
        rt.pipeline.settle()  # (journal on: n counts what was journaled; the store decides once moved)
        return n if journal == "off" else len(inbound_rows(rt.store.path)) - stored_before

    stored_before = 0
    assert accept([dmsg("x1", text="one"), dmsg("x2", text="two")], "dummy:D1") == 2
    assert inbound_rows(rt.store.path) == {"x1": 1, "x2": 1}
    assert deliveries(rt.store) == {"dummy:D1", "dummy:D1#1"}
    stored_before = 2
    assert accept([dmsg("x1", text="one"), dmsg("x2", text="two")], "dummy:D1") == 0
    # the same delivery, even were the provider to give its messages other ids
    assert accept([dmsg("y1"), dmsg("y2")], "dummy:D1") == 0
    assert set(inbound_rows(rt.store.path)) == {"x1", "x2"}
    assert usage_of(rt.store, "d1")["messages_in"] == 2
    # a new delivery is accepted
    assert accept([dmsg("y1")], "dummy:D2") == 1
    assert set(inbound_rows(rt.store.path)) == {"x1", "x2", "y1"}


def test_an_old_stop_delivered_again_does_not_undo_a_newer_start(make_runtime):
    rt = make_runtime([dummy_channel()])
    stop = [dmsg("s1", text="STOP", intent="opt_out")]
    start = [dmsg("s2", text="START", intent="opt_in")]
    rt.pipeline.accept("dummy", stop, delivery_key="dummy:K1")
    assert rt.store.opted_out("d1", "dummy:ann")
    rt.pipeline.accept("dummy", start, delivery_key="dummy:K2")
    assert not rt.store.opted_out("d1", "dummy:ann")
    rt.pipeline.accept("dummy", stop, delivery_key="dummy:K1")  # Twilio retries the old STOP
    assert not rt.store.opted_out("d1", "dummy:ann")


def test_an_old_start_delivered_again_does_not_undo_a_newer_stop(make_runtime):
    rt = make_runtime([dummy_channel()])
    rt.pipeline.accept("dummy", [dmsg("a1", sender="dummy:cat", text="STOP", intent="opt_out")],
                       delivery_key="dummy:K1")
    start = [dmsg("a2", sender="dummy:cat", text="START", intent="opt_in")]
    rt.pipeline.accept("dummy", start, delivery_key="dummy:K2")
    assert not rt.store.opted_out("d1", "dummy:cat")
    rt.pipeline.accept("dummy", [dmsg("a3", sender="dummy:cat", text="STOP", intent="opt_out")],
                       delivery_key="dummy:K3")
    assert rt.store.opted_out("d1", "dummy:cat")
    rt.pipeline.accept("dummy", start, delivery_key="dummy:K2")  # the START again, after the newer STOP
    assert rt.store.opted_out("d1", "dummy:cat")
    assert deliveries(rt.store) == {"dummy:K1", "dummy:K2", "dummy:K3"}
    assert set(inbound_rows(rt.store.path)) == {"a1", "a2", "a3"}
    # without a key, a retried STOP is still applied (a STOP is never lost)
    rt.pipeline.accept("dummy", start, delivery_key="dummy:K4")
    assert not rt.store.opted_out("d1", "dummy:cat")
    rt.pipeline.accept("dummy", [dmsg("a3", sender="dummy:cat", text="STOP", intent="opt_out")])
    assert rt.store.opted_out("d1", "dummy:cat")


def test_webhook_workers_checkpoint_the_store_themselves_under_a_reply_sender(make_runtime, monkeypatch):
    """SOPHON_REPLIES=sender: the sender (nice +19) may be starved under load; each worker
    checkpoints too, so no webhook's commit has to checkpoint a long log in the write lock."""
    rt = make_runtime([dummy_channel()], env={"SOPHON_REPLIES": "sender"})
    assert checkpointing_thread(rt, monkeypatch) == "sophon-checkpoint"


# --- 6. how a batch is led: one wake-up per follower, one batch in flight, no savepoints ---

def test_each_follower_is_woken_exactly_once(tmp_path, monkeypatch):
    """A follower sleeps on a lock of its own until its leader wakes it (to return, or to lead
    the next batch): never woken for another batch's sake."""
    store = Store(tmp_path / "s.db")
    wakes: dict[str, int] = {}
    guard = threading.Lock()
    real_wake = store_mod._Pending.wake

    def wake(item):
        with guard:
            wakes[item.args[0].provider_message_id] = wakes.get(item.args[0].provider_message_id, 0) + 1
        real_wake(item)

    monkeypatch.setattr(store_mod._Pending, "wake", wake)
    batches = spy_batches(store, monkeypatch, delay=0.02)
    n = 24
    results = run_threads([lambda i=i: store.accept_inbound(msg(f"m{i}"), "s") for i in range(n)])
    assert {r[0] for r in results.values()} == {"ok"}
    first = batches[0][0]  # the first leader found no batch under way: it never slept
    assert wakes.get(first, 0) == 0, wakes
    # every other accept was woken once: to return, or (a later batch's leader) to lead
    assert {mid: wakes.get(mid, 0) for b in batches for mid in b if mid != first} == {
        mid: 1 for b in batches for mid in b if mid != first}, (wakes, batches)
    assert len(batches) < n  # some were committed together


def test_one_batch_per_process_is_in_flight_from_its_commit_to_the_end_of_its_fsync(tmp_path, monkeypatch):
    """The next batch is committed only once the previous one's fsync ended (it grows meanwhile)."""

    store = Store(tmp_path / "s.db")
    log = FsyncLog(monkeypatch)  # each fdatasync sleeps a little, so that accepts pile up during it
    real = store._commit_batch

    def commit(batch):
        log.add("commit-begin", len(batch))
        real(batch)
        log.add("commit-end", len(batch))

    monkeypatch.setattr(store, "_commit_batch", commit)
    n = 40
    results = run_threads([lambda i=i: store.accept_inbound(msg(f"m{i}"), "s") for i in range(n)])
    assert {r[0] for r in results.values()} == {"ok"}
    events = [e for e in log.events if e[0] in ("commit-begin", "commit-end", "begin", "end")]
    in_flight = False  # a batch committed and not yet synced
    syncing = 0
    for kind, _ in events:
        if kind == "commit-begin":
            assert not in_flight and syncing == 0, events  # never while the last batch waits for its fsync
        elif kind == "commit-end":
            in_flight = True
        elif kind == "begin":
            syncing += 1
        elif kind == "end":
            syncing -= 1
            in_flight = False
    sizes = [size for kind, size in events if kind == "commit-begin"]
    assert sum(sizes) == n and max(sizes) > 1, sizes


def test_a_batch_where_nothing_fails_is_written_without_savepoints_one_that_fails_with_them(tmp_path):
    store = Store(tmp_path / "s.db")
    statements: list[str] = []
    store._batch_conn().set_trace_callback(statements.append)
    good = [store_mod._Pending((msg(f"g{i}"), "s", None, None)) for i in range(3)]
    with store._locked():
        store._commit_batch(good)
    assert [p.result[0] for p in good] == ["queued"] * 3
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements
    assert sum(s.startswith("BEGIN") for s in statements) == 1

    statements.clear()
    bad = msg("bad")
    object.__setattr__(bad, "metadata", {"not": object()})  # cannot be stored as JSON: fails after its insert
    mixed = [store_mod._Pending((m, "s", None, None)) for m in (msg("h1"), bad, msg("h2"))]
    with store._locked():
        store._commit_batch(mixed)
    assert [p.error is None for p in mixed] == [True, False, True]
    assert [s for s in statements if s.upper().startswith("SAVEPOINT")], statements  # the second attempt
    assert sum(s.startswith("BEGIN") for s in statements) == 2 and statements.count("ROLLBACK") == 1
    assert inbound_rows(store.path) == {"g0": 1, "g1": 1, "g2": 1, "h1": 1, "h2": 1}


def test_the_leaders_share_one_connection_and_a_forked_child_opens_its_own(tmp_path, monkeypatch):
    store = Store(tmp_path / "s.db")
    used = []
    real = store._commit_batch
    monkeypatch.setattr(store, "_commit_batch", lambda batch: (used.append(store._batch_conn()), real(batch)))
    results = run_threads([lambda i=i: store.accept_inbound(msg(f"m{i}"), "s") for i in range(12)])
    assert {r[0] for r in results.values()} == {"ok"}
    assert len({id(db) for db in used}) == 1  # whichever thread led
    first = used[0]
    monkeypatch.setattr(store, "_batch_pid", -1)  # as seen from a child after fork
    assert store._batch_conn() is not first
