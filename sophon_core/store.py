"""SQLite state under ``SOPHON_DATA_DIR``: message log, sessions, the job queue.

The small interface the pipeline needs (accept, claim, renew, parts, complete,
retry, fail, history) so a server database can replace SQLite later without
touching channel plugins. One connection per thread; WAL mode, so several
gunicorn workers share one file safely.

Every inbound message gets a job in the same transaction. Workers claim jobs
with a lease; a job whose worker died is claimed again when its lease runs
out. Each outbound part is recorded (``pending``) before it is sent, marked
``in-flight`` just before the provider call and gets the provider's id after it.
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .models import Attachment, DroppedAttachment, InboundMessage, Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    channel_id  TEXT NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    provider_id TEXT,
    peer        TEXT NOT NULL,
    session_key TEXT NOT NULL,
    text        TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    reply_to    INTEGER,          -- outbound: the inbound row it answers
    job_id      INTEGER,          -- outbound: the job that sends it
    part_no     INTEGER,          -- outbound: position in a split reply
    units       INTEGER,          -- billing units (SMS segments) of this message
    media       TEXT,             -- JSON list of the files: inbound, those the sender attached; outbound, the part's
    created_at  REAL NOT NULL,        -- inbound: when it was acknowledged (its job's acked_at)
    updated_at  REAL,
    turn_at     REAL              -- outbound reply: its inbound's created_at (NULL: created_at); history's order
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_part_once
    ON messages (job_id, part_no) WHERE direction = 'out';
-- (messages_in_turn_order, on messages (session_key, COALESCE(turn_at, created_at), COALESCE(reply_to, id), id):
--  made by Store._migrate, once turn_at exists)

CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    inbound_id  INTEGER NOT NULL UNIQUE,
    channel_id  TEXT NOT NULL,
    session_key TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    lease_token INTEGER NOT NULL DEFAULT 0,
    first_failure_at REAL,            -- when sending first failed (the retry window starts)
    payload     TEXT NOT NULL,    -- the InboundMessage as JSON
    acked_at    REAL,             -- when its message was acknowledged: a session's jobs run in this order
    reply       TEXT,             -- the agent's answer, once known
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS opt_outs (
    channel_id  TEXT NOT NULL,
    peer        TEXT NOT NULL,
    keyword     TEXT NOT NULL,
    at          REAL NOT NULL,
    PRIMARY KEY (channel_id, peer)
);

CREATE TABLE IF NOT EXISTS usage (
    channel_id  TEXT NOT NULL,
    day         TEXT NOT NULL,    -- UTC, YYYY-MM-DD
    counter     TEXT NOT NULL,    -- messages_in, units_in, messages_out, units_out, blocked, ...
    value       INTEGER NOT NULL,
    PRIMARY KEY (channel_id, day, counter)
);

-- (channel, provider message id) of the inbound messages stored in the last KEEP_KEYS_SECONDS:
-- a message whose id is here is a duplicate. Kept short (Store.prune) rather than a unique index
-- on the whole log: provider ids are random, and in an index over all history each new one
-- lands on a page of its own (measured: bench/run --only history).
CREATE TABLE IF NOT EXISTS inbound_ids (
    channel_id  TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    at          REAL NOT NULL,
    PRIMARY KEY (channel_id, provider_id)
);

CREATE TABLE IF NOT EXISTS deliveries (  -- webhook idempotency keys already processed
    key         TEXT PRIMARY KEY,
    at          REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS early_status (  -- delivery reports that arrived before their Sid was recorded
    provider_id TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    error       TEXT,
    at          REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS pacing (
    address     TEXT PRIMARY KEY,
    next_at     REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS messages_by_provider_id ON messages (provider_id) WHERE direction = 'out';
-- the per-sender hourly limit counts a sender's recent messages on every webhook; with `direction`
-- the index alone answers that count (a covering index), else SQLite before 3.51 (3.40 in Debian 12)
-- also looks up each counted message in the table (replaces messages_by_sender, which lacked it:
-- Store._migrate)
CREATE INDEX IF NOT EXISTS messages_from_sender
    ON messages (channel_id, peer, created_at, direction) WHERE direction = 'in';
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state, not_before) WHERE state IN ('queued', 'running');
-- (jobs_in_session_order, on jobs (session_key, acked_at, id): made by Store._migrate, once acked_at exists)
"""

_OPEN = "('queued', 'running')"
# A conversation's turn is an inbound message and its replies, at the time the message was
# acknowledged: the order ``Store.claim`` answers them in (see ``Store.history``)
RECENT_ROWS = 10_000  # the newest messages, where Store._migrate looks for replies an older version stored
TURN_ORDER = "(session_key, COALESCE(turn_at, created_at), COALESCE(reply_to, id), id)"
_TURN_OF = "(SELECT created_at FROM messages WHERE id = ?)"  # a reply's turn_at: its inbound's time
# A session's turns before the current one (its time twice, its id), newest first: read in
# messages_in_turn_order's order, ``limit`` rows plus those filtered out
HISTORY = ("SELECT direction, text, peer, created_at FROM messages WHERE session_key = ?"
           " AND COALESCE(turn_at, created_at) <= ?"
           " AND (COALESCE(turn_at, created_at) < ? OR COALESCE(reply_to, id) < ?)"
           " AND ((direction = 'in' AND status = 'received')"  # not STOP/START/HELP, not rate-limited
           "      OR (direction = 'out' AND status NOT IN ('failed', 'skipped', 'pending', 'in-flight')))"
           " ORDER BY COALESCE(turn_at, created_at) DESC, COALESCE(reply_to, id) DESC, id DESC LIMIT ?")
# A sender's inbound messages since a moment, counted up to a limit (the hourly limit per sender,
# on every webhook): read from messages_from_sender alone.
HOURLY_COUNT = ("SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE direction = 'in' AND channel_id = ?"
                " AND peer = ? AND created_at >= ? LIMIT ?)")
# Pages in the write-ahead log past which a commit checkpoints by itself (about 160 MB):
# a safety net. ``Store.checkpoint`` (every second) lets the log start over long before,
# at 15,000 pages at most at 2,000 webhooks/s here.
AUTO_CHECKPOINT_PAGES = 40_000
# Inbound message ids, webhook idempotency keys and delivery reports still waiting for their
# message are kept this long (``Store.prune``), so those tables hold a few days of traffic,
# not all of it. Twilio retries a webhook within its 15 s timeout; a status report's message
# is recorded within seconds of the report, or never.
KEEP_KEYS_SECONDS = 2 * 86400
PRUNE_BATCH = 5000  # rows per transaction, so that webhooks never wait long behind a prune


def _wal(db: sqlite3.Connection, tries: int = 100) -> None:
    """Switch the file to WAL. Switching needs the file to itself, and SQLite answers
    "database is locked" at once (no busy wait) when another process opens it at the
    same moment, e.g. two gunicorn workers on a fresh data folder: try again."""
    for attempt in range(tries):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.01 + 0.01 * attempt)


_MESSAGE_FIELDS = tuple(f.name for f in fields(InboundMessage))


def message_dict(msg: InboundMessage) -> dict:
    """The message as plain data, what ``asdict(msg)`` gives (read back by ``message_from_dict``),
    built without ``asdict``'s recursive deep copy of every field."""
    d = {name: getattr(msg, name) for name in _MESSAGE_FIELDS}
    d["metadata"] = dict(msg.metadata)
    d["dropped_attachments"] = [asdict(a) for a in msg.dropped_attachments]
    d["attachments"] = [asdict(a) for a in msg.attachments]
    return d


def message_json(msg: InboundMessage) -> str:
    """A job's payload: the message as JSON (``message_dict``)."""
    return json.dumps(message_dict(msg))


def message_from_dict(d: dict) -> InboundMessage:
    d = dict(d)
    d["dropped_attachments"] = tuple(DroppedAttachment(**a) for a in d["dropped_attachments"])
    d["attachments"] = tuple(Attachment(**a) for a in d.get("attachments", ()))
    return InboundMessage(**d)


def _as_error(exc: BaseException) -> Exception:
    """What an accept whose batch failed with ``exc`` raises (an ``Exception`` even when the
    leader was interrupted by a ``BaseException``, which only the leader re-raises)."""
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class _Pending:
    """One ``accept_inbound`` call waiting to be committed (see ``Store._lead``).

    Its thread sleeps on a lock of its own until it is woken, once: to return (its
    batch is done) or to lead the next batch (``lead``). A condition shared by every
    waiting thread would wake them all at every batch.
    """

    __slots__ = ("args", "lead", "result", "error", "number", "_sleep")

    def __init__(self, args: tuple):
        self.args, self.lead, self.result, self.error, self.number = args, False, None, None, 0
        self._sleep = threading.Lock()
        self._sleep.acquire()

    def wait(self) -> None:
        self._sleep.acquire()

    def wake(self) -> None:
        self._sleep.release()


class LeaseLost(Exception):
    """The job was claimed by another runner (our lease ran out): stop working on it."""


@dataclass(frozen=True)
class Job:
    id: int
    inbound_id: int
    channel_id: str
    session_key: str
    attempts: int
    created_at: float
    reply: str | None
    token: int
    first_failure_at: float | None
    message: InboundMessage


@dataclass(frozen=True)
class Part:
    id: int
    part_no: int
    text: str
    status: str  # pending, in-flight, then the provider's (queued, sent, ...), or failed / skipped
    provider_id: str | None
    media: tuple = ()  # files this part carries: dicts from MediaFiles.keep_outbound


class Store:
    """The message log and job queue. ``path`` is created with its folder on first use."""

    def __init__(self, path: Path, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"SQLite synchronous mode must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Writers of this process queue here, in order, instead of in SQLite's busy handler
        # (which sleeps 1, 2, 5 ... 100 ms between tries, first come not first served);
        # writers of other processes queue on a lock on this file (see _locked).
        self._write_lock = threading.Lock()
        self._lock_path = Path(f"{self.path}-writelock")
        self._lock_fd: int | None = None
        self._lock_pid = 0  # the process that opened _lock_fd (a forked child opens its own)
        self._pending: list[_Pending] = []  # accepts waiting for the next group commit
        self._batch_lock = threading.Lock()  # guards _pending and _committing
        self._committing = False  # a thread of this process leads a batch (commits it, then syncs it)
        self._batch_db: sqlite3.Connection | None = None  # used by the leader only (see _batch_conn)
        self._batch_pid = 0
        # A relaxed commit (see relax_this_thread) of this process since the last durable one.
        self._unsynced = False
        # fsyncs of the write-ahead log after the commit, outside the write lock (see _await_sync)
        self._sync_cv = threading.Condition(threading.Lock())
        self._committed = 0  # commits (and barriers) of this process so far, numbered
        self._covered = 0  # the highest number a finished fsync round covered (whether it worked or not)
        self._syncing = False  # a round is under way
        self._failed: collections.deque = collections.deque(maxlen=1000)  # (after, upto, error) of failed rounds
        # Called by a group commit's leader once per batch that queued a job, when the batch is
        # committed (and synced) and its accepts woken: one wake-up of whoever answers the jobs
        # (the reply sender: see Pipeline) per batch rather than per message. Must not raise.
        self.on_queued: Callable[[], None] | None = None
        self._conn().executescript(_SCHEMA)  # idempotent; executescript commits by itself
        self._migrate()
        if self._full:
            self._fsync_wal()

    def _migrate(self) -> None:
        """Bring a store made by an older version up to date (columns added since; the unique
        index on inbound provider ids replaced by ``inbound_ids``; ``messages_by_sender``
        replaced by ``messages_from_sender``, made by ``_SCHEMA``)."""
        db = self._conn()

        def has_index(name: str) -> bool:
            return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
                              (name,)).fetchone() is not None

        if has_index("messages_inbound_once"):
            with self._write(durable=True) as tx:  # (another worker may have done it meanwhile: idempotent)
                tx.execute("INSERT OR IGNORE INTO inbound_ids SELECT channel_id, provider_id, created_at FROM messages"
                           " WHERE direction = 'in' AND provider_id IS NOT NULL AND created_at >= ?",
                           (time.time() - KEEP_KEYS_SECONDS,))
                tx.execute("DROP INDEX IF EXISTS messages_inbound_once")
        if has_index("messages_by_sender"):
            with self._write(durable=True) as tx:  # (messages_from_sender covers its query)
                tx.execute("DROP INDEX IF EXISTS messages_by_sender")
        for table, column in (("messages", "media TEXT"), ("jobs", "acked_at REAL"), ("messages", "turn_at REAL")):
            if column.split()[0] not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                try:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                except sqlite3.OperationalError as exc:  # another worker added it first
                    if "duplicate column" not in str(exc):
                        raise
        # (the old indexes again: a process of an older version opened the store since, and made them)
        if not has_index("jobs_in_session_order") or has_index("jobs_by_session"):  # (jobs_by_session: by id)
            with self._write(durable=True) as tx:
                tx.execute("CREATE INDEX IF NOT EXISTS jobs_in_session_order ON jobs (session_key, acked_at, id)"
                           f" WHERE state IN {_OPEN}")
                tx.execute("DROP INDEX IF EXISTS jobs_by_session")
        # Replies without their turn: all of them in a store made before turn_at, or an older
        # version's since (one of its processes still running, e.g. while gunicorn reloads: among
        # the newest rows, looked for at every start)
        everything = not has_index("messages_in_turn_order") or has_index("messages_by_turn")
        unset = "reply_to IS NOT NULL AND turn_at IS NULL"
        recent = " AND id > (SELECT MAX(id) FROM messages) - ?"
        if everything or db.execute(f"SELECT 1 FROM messages WHERE {unset}{recent} LIMIT 1",
                                    (RECENT_ROWS,)).fetchone():
            with self._write(durable=True) as tx:
                tx.execute("UPDATE messages SET turn_at = (SELECT i.created_at FROM messages i"
                           f" WHERE i.id = messages.reply_to) WHERE {unset}" + ("" if everything else recent),
                           () if everything else (RECENT_ROWS,))
                tx.execute(f"CREATE INDEX IF NOT EXISTS messages_in_turn_order ON messages {TURN_ORDER}")
                tx.execute("DROP INDEX IF EXISTS messages_by_turn")

    @property
    def _full(self) -> bool:
        return self.synchronous == "FULL"

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._open()
        return db

    def close_this_thread(self) -> None:
        """Close this thread's connection (a thread that ends: the pipeline's)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.close()

    def close(self) -> None:
        """Close this thread's connection and the group commits' one (the others close as their
        threads end). SQLite keeps a closed connection's file open while another connection of
        the process still holds the file (closing it would drop that one's locks): the last one
        to close releases them all. A later call opens connections again."""
        self.close_this_thread()
        with self._write_lock:  # (not while a thread of ours holds the write lock: a batch's leader)
            if self._batch_db is not None and self._batch_pid == os.getpid():
                self._batch_db.close()
            self._batch_db = None
            if self._lock_fd is not None and self._lock_pid == os.getpid():
                os.close(self._lock_fd)
                self._lock_fd, self._lock_pid = None, 0

    def _batch_conn(self) -> sqlite3.Connection:
        """The connection the group commits of this process use (``_commit_batch``), one
        leader at a time: its page cache stays warm from batch to batch, where each
        leader's own connection would first read back the pages the last leader wrote."""
        if self._batch_db is None or self._batch_pid != os.getpid():
            self._batch_db, self._batch_pid = self._open(check_same_thread=False), os.getpid()
        return self._batch_db

    def _open(self, check_same_thread: bool = True) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=check_same_thread)
        _wal(db)
        # SQLite itself never fsyncs a commit (NORMAL); under FULL the commits that must be
        # durable are fsynced by _await_sync, after the commit and outside the write lock.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        # Checkpoints run in the background (``checkpoint``, from the pipeline's heartbeat),
        # not inside whichever commit crosses SQLite's 1000-page mark: that commit would
        # copy the log into the database file and fsync both while holding the write lock.
        # The commits still checkpoint by themselves past AUTO_CHECKPOINT_PAGES, should
        # no background checkpoint run (a store used by a CLI command, a stalled sender).
        db.execute(f"PRAGMA wal_autocheckpoint={AUTO_CHECKPOINT_PAGES}")
        return db

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The write lock: this process's threads queue on ``_write_lock``, then the processes
        on an exclusive ``flock`` of ``<db>-writelock``.

        Without the second lock a worker that finds another process's transaction under
        way waits in SQLite's busy handler, which sleeps 1, 2, 5 ... 100 ms between tries
        and so often sleeps well past the moment the lock came free; ``flock`` wakes the
        waiter as soon as it is released. It is released by the kernel when its holder
        dies (the file descriptor closes), so a killed worker never leaves it taken. Each
        process opens the file itself (a descriptor inherited through ``fork`` shares the
        parent's lock), and each Store object too (two objects of one process on one
        database exclude each other like two processes). SQLite's own lock is still
        taken inside it (``BEGIN IMMEDIATE``): writers that do not use this lock, such
        as an older version or the ``sqlite3`` shell, stay correct, merely slower.
        """
        with self._write_lock:
            if self._lock_pid != os.getpid():
                if self._lock_fd is not None:  # inherited from the parent: not ours to use
                    os.close(self._lock_fd)
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._lock_pid = os.getpid()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (no lock upgrade deadlocks between workers).

        Under ``FULL`` it returns only once the commit is on disk (``_await_sync``), except
        on a relaxed thread (``relax_this_thread``).
        :param durable: on disk before it returns even on a relaxed thread: for what must
            survive a power cut.
        """
        db = self._conn()
        wait = self._full and (durable or not self._relaxed())
        with self._locked():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            number = self._number()
            if self._full and not wait:
                self._unsynced = True
        if wait:
            self._await_sync(number)

    # --- durability -----------------------------------------------------------------

    def _number(self) -> int:
        """Number a commit that just ended (or a barrier): fsync rounds that begin from now on cover it."""
        with self._sync_cv:
            self._committed += 1
            return self._committed

    def _await_sync(self, number: int) -> None:
        """Return once an fsync of the write-ahead log that began after commit ``number``
        succeeded; raise ``OSError`` if the first such fsync failed.

        Why an fsync of the ``-wal`` file after a ``synchronous=NORMAL`` commit makes that
        commit as durable as a ``FULL`` one: in WAL mode a commit appends its pages to the
        log and ends with a commit frame; ``FULL`` only adds an fsync of the log at that
        point, before the commit is published to other connections. The frames of a commit
        are never overwritten or removed before a checkpoint has copied every frame of
        the log into the database file and synced it (SQLite restarts the log only then,
        and syncs a new log header before writing frames after it; the checkpoints of
        NORMAL and FULL connections sync alike). So an fsync of the log that starts after
        the commit either puts the commit's frames on disk, or finds them already copied
        into the synced database file (then the log may even be gone: nothing to do).
        Recovery after a power cut replays the log up to the last valid commit frame,
        ours included.

        The fsync happens here, outside the write lock: the next transaction (another
        process's group commit, a runner's bookkeeping) is written meanwhile, instead of
        waiting for the disk. Rounds: one thread at a time fsyncs, covering every commit numbered
        before it began; the threads that commit meanwhile wait and share the next round.
        What differs from ``FULL`` is only what other connections see: a commit is visible
        to them (e.g. a runner claiming its job) before it is on disk; ``claim`` therefore
        waits for a round too before it hands a job out.

        A failed fsync fails every commit it was to cover (their requests get a 5xx, and
        Twilio retries: the retry is a duplicate, which waits for a round of its own) and
        each later commit until a round succeeds. As with SQLite's own ``FULL`` commit,
        which fails the same way, a later successful fsync is taken at its word (on Linux
        a failed write-back can leave pages of the file unwritten; the kernel reports that
        once).
        """
        with self._sync_cv:
            while self._covered < number:
                if self._syncing:
                    self._sync_cv.wait()
                    continue
                self._syncing = True
                after, upto = self._covered, self._committed
                error: BaseException | None = None
                self._sync_cv.release()
                try:
                    self._fsync_wal()
                except BaseException as exc:
                    error = exc
                finally:
                    self._sync_cv.acquire()
                    self._covered, self._syncing = upto, False
                    if error is not None:
                        self._failed.append((after, upto, error))
                    self._sync_cv.notify_all()
                if error is not None and not isinstance(error, Exception):
                    raise error
            for after, upto, error in self._failed:
                if after < number <= upto:
                    raise OSError(f"the store could not be synced to disk: {error}") from error

    def _barrier(self) -> None:
        """Under ``FULL``: return once an fsync that began after this call succeeded, so that
        whatever this process saw committed (by any process) is on disk."""
        if self._full:
            self._await_sync(self._number())

    def _fsync_wal(self) -> None:
        """Sync the write-ahead log's data to disk with ``fdatasync``, as SQLite's own syncs do
        on Linux (``full_fsync`` in os_unix.c): it writes the data and whatever metadata reading
        it back needs (the file's size when it grew), not its timestamps."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # checkpointed into the (synced) database file and removed
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    # --- durability of the reply side ---------------------------------------------

    def _relaxed(self) -> bool:
        return getattr(self._local, "relaxed", False)

    def relax_this_thread(self) -> None:
        """This thread's commits return without waiting for an fsync.

        For the pipeline's runner threads (reply bookkeeping: claim, parts, pacing, sent
        ids), whose five or so commits per reply part would otherwise wait for a disk
        flush each. In WAL mode such a commit is consistent and survives a crash of the
        process; it reaches the disk with the next fsync of the log (any acknowledgement's
        covers the whole log before it), or with ``sync_relaxed`` at the latest. A power
        cut before that rolls the store back to an earlier consistent point (see
        pipeline.py). Acknowledged messages (``accept_inbound``, ``record_consent``) and
        ``_write(durable=True)`` still wait for their fsync on any thread. Changes nothing
        for a store opened with ``NORMAL``.
        """
        self._local.relaxed = True

    def sync_relaxed(self) -> bool:
        """Put this process's relaxed commits on disk now, if there were any since the last
        call: an fsync of the write-ahead log, which is what a ``FULL`` commit does.

        The pipeline calls it about every second (``Pipeline._heartbeat``), so a power cut
        rolls back at most about a second of reply bookkeeping.
        :return: True when it synced.
        """
        if not self._unsynced:
            return False
        self._unsynced = False  # before the fsync: a commit after this point is synced next time
        try:
            self._fsync_wal()
        except BaseException:
            self._unsynced = True
            raise
        return True

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file, so that the log starts over.

        First a passive checkpoint: it never waits for, nor blocks, readers or writers
        (SQLite syncs the log before and the database file after). Under a steady stream
        of commits that is not enough: they append to the log while it is copied, and
        SQLite starts the log over only when a write begins on a log copied whole. So a
        second passive pass follows inside the write lock, which copies what was appended
        during the first one (little): the next commit then starts the log over. Without
        it the log grew to ``AUTO_CHECKPOINT_PAGES`` and the commit that crossed the mark
        copied the rest itself, while every other commit waited (README, Performance).
        The pipeline calls this every second (see ``_open``)."""
        db = self._conn()
        rows = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        busy, frames, _ = rows[0] if rows else (0, 0, 0)
        # (what it reports was whole when it began; commits may have appended since. Busy:
        # another connection's checkpoint is at it. A pass with nothing left to copy is free.)
        if not busy and frames > 0:
            with self._locked():
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # --- inbound -------------------------------------------------------------------

    def accept_inbound(self, msg: InboundMessage, session_key: str, max_per_hour: int | None = None,
                       delivery_key: str | None = None) -> tuple[str, int | None]:
        """Store an inbound message once per (channel, provider message id) (ids are kept
        ``KEEP_KEYS_SECONDS``: ``inbound_ids``), with its job and today's usage, committed
        before this returns.

        Group commit: webhook threads of one process that arrive while another batch is
        committed and synced are stored together in the next transaction; a failure of
        one message rolls back only that message (``_commit_batch``).
        One of them (the leader) commits the batch; the others sleep until it wakes them
        and never touch the write lock (``_lead``).
        Under ``FULL`` each returns only once an fsync that began after that commit
        succeeded (``_await_sync``: outside the write lock, one for every commit made
        meanwhile; the leader waits for it, then wakes the batch), a duplicate too.

        :param max_per_hour: when the sender already sent this many messages to the
            channel in the last hour, the message is stored as ``rate-limited``, no job.
        :param delivery_key: the webhook delivery's idempotency key (one per message of it:
            see ``Pipeline.accept``): a key seen before makes the message a duplicate, whatever
            its id; a new one is remembered with it.
        :return: ``("queued", row)``, ``("rate-limited", row)`` or ``("duplicate", None)``.
        """
        item = _Pending((msg, session_key, max_per_hour, delivery_key))
        with self._batch_lock:
            if self._committing:  # another thread's batch is under way: queue for the next one
                self._pending.append(item)
            else:
                self._committing = item.lead = True
        if not item.lead:
            item.wait()  # woken once: our batch is done (and synced), or we lead the next one
        if item.lead:
            self._lead(item)
        if item.error is not None:
            raise item.error
        return item.result

    def _lead(self, item: "_Pending") -> None:
        """Commit ``item`` and every accept queued so far as one batch; wait for the fsync
        (``_await_sync``, under ``FULL``); hand the lead to the first accept queued meanwhile;
        then wake each accept of the batch, once; then call ``on_queued`` if the batch queued a job.

        One batch at a time per process, from its commit to the end of its fsync: the
        accepts that arrive meanwhile make the next batch larger, and each commit and
        fsync is shared by more of them (measured with ``bench/run``: less CPU per
        webhook than overlapping the next commit with this fsync). The write lock is free
        during the fsync, for other processes. Whatever fails (the lock, the transaction,
        the fsync) fails every accept of the batch that had not failed on its own, so none
        of them waits forever."""
        with self._batch_lock:
            batch, self._pending = [item, *self._pending], []
        failure: BaseException | None = None
        try:
            try:
                with self._locked():
                    self._commit_batch(batch)
                if self._full and any(other.error is None for other in batch):
                    # on disk before the 200, duplicates too (their first copy may not be yet)
                    self._await_sync(item.number)
            finally:
                self._pass_the_lead()
        except BaseException as exc:
            failure = exc
            for other in batch:
                if other.error is None:
                    other.result, other.error = None, _as_error(exc)
        finally:
            for other in batch:
                if other is not item:
                    other.wake()
        if failure is not None:
            if not isinstance(failure, Exception):
                raise failure
        elif self.on_queued is not None and any(o.error is None and o.result[0] == "queued" for o in batch):
            self.on_queued()

    def accept_batch(self, items: Sequence[tuple]) -> list[tuple[tuple[str, int | None] | None, Exception | None]]:
        """Store several messages at once, as ``accept_inbound`` would one by one, in one
        transaction on this thread's connection, synced before this returns (under ``FULL``).

        For the mover of a worker's journal (see ack_journal.py): one thread that commits
        the messages its worker acknowledged in large batches.
        :param items: ``(msg, session_key, max_per_hour, delivery_key, acked_at, not_before)``
            each (see ``_accept_one``).
        :return: per item, in order, its outcome (see ``accept_inbound``) and ``None``, or
            ``None`` and the error that kept that message alone out of the store.
        :raises Exception: the transaction or its sync failed: none of them is known to
            be stored (some may be: accepting them again is safe, they are duplicates then).
        """
        batch = [_Pending(args) for args in items]
        if not batch:
            return []
        with self._locked():
            failed = self._commit_batch(batch, self._conn())
        if failed is not None:
            raise failed
        if self._full and any(p.error is None for p in batch):
            self._await_sync(batch[0].number)  # (duplicates too: their first copy may not be on disk yet)
        return [(p.result, p.error) for p in batch]

    def _pass_the_lead(self) -> None:
        with self._batch_lock:
            if self._pending:
                nxt = self._pending.pop(0)
                nxt.lead = True
                nxt.wake()
            else:
                self._committing = False

    def _commit_batch(self, batch: list["_Pending"], db: sqlite3.Connection | None = None) -> Exception | None:
        """One transaction for every pending accept (caller holds the write lock); the
        usage counters of the batch are added once per channel, at its end.

        The batch is first written as it is; should a message fail, that attempt is rolled
        back whole and the batch written again with each message under a savepoint of its
        own, so that only the failing one is lost (two statements per message saved in
        the usual case, where none fails).
        :param db: the connection to use (default: the group commits' own, ``_batch_conn``).
        :return: the error when the transaction itself failed (each item has it too)."""
        db = db or self._batch_conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            if not self._write_batch(db, batch, isolate=False):
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                self._write_batch(db, batch, isolate=True)
            db.execute("COMMIT")
        except BaseException as exc:  # the transaction itself failed: nothing of it is stored
            if db.in_transaction:
                db.execute("ROLLBACK")
            for item in batch:
                item.result, item.error = None, _as_error(exc)
            if not isinstance(exc, Exception):
                raise
            return exc
        number = self._number()
        for item in batch:
            item.number = number
        return None

    def _write_batch(self, db: sqlite3.Connection, batch: list["_Pending"], isolate: bool) -> bool:
        """Write the batch's messages and its usage counters into the open transaction.
        :param isolate: each message under a savepoint: one that fails gets its error and
            leaves nothing behind. Without it, the first failure stops the batch.
        :return: False when a message failed without ``isolate`` (roll the transaction back).
        """
        usage: dict[str, collections.Counter] = {}
        for item in batch:
            item.error = None
            if isolate:
                db.execute("SAVEPOINT one")
            try:
                item.result, counters = self._accept_one(db, *item.args)
            except Exception as exc:
                if not isolate:
                    return False
                db.execute("ROLLBACK TO one")
                db.execute("RELEASE one")
                item.result, item.error = None, exc
                continue
            if isolate:
                db.execute("RELEASE one")
            if counters:
                usage.setdefault(item.args[0].channel_id, collections.Counter()).update(counters)
        for channel_id, counters in usage.items():
            self._add_usage(db, channel_id, counters)
        return True

    def _accept_one(self, db: sqlite3.Connection, msg: InboundMessage, session_key: str,
                    max_per_hour: int | None, delivery_key: str | None, acked_at: float | None = None,
                    not_before: float | None = None) -> tuple[tuple[str, int | None], dict]:
        """Store one message (and its job); :return: the outcome and the usage counters to add.
        :param acked_at: when the message was acknowledged (default: now, this commit).
        :param not_before: its job runs no earlier (default: now)."""
        now = time.time()
        if delivery_key and not self._new_delivery(db, delivery_key, now):
            return ("duplicate", None), {}  # this webhook delivery was processed before
        # (counts no further than the limit: a sender flooding the number costs each of its
        # messages the same, not one more index entry per message it sent this hour)
        limited = max_per_hour is not None and db.execute(
            HOURLY_COUNT, (msg.channel_id, msg.sender, now - 3600, max_per_hour)).fetchone()[0] >= max_per_hour
        acked_at = now if acked_at is None else acked_at  # (the message's time too: history's order is claim's)
        row = self._insert_inbound(db, msg, session_key, "rate-limited" if limited else "received", acked_at)
        if row is None:
            return ("duplicate", None), {}
        counters = {"messages_in": 1, "units_in": msg.units}
        if limited:
            return ("rate-limited", row), {**counters, "rate_limited": 1}
        db.execute(
            "INSERT INTO jobs (inbound_id, channel_id, session_key, state, not_before, payload, acked_at,"
            " created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
            (row, msg.channel_id, session_key, now if not_before is None else not_before, message_json(msg),
             acked_at, now, now))
        return ("queued", row), counters

    def record_consent(self, msg: InboundMessage, session_key: str, delivery_key: str | None = None) -> bool:
        """Store an opt-out / opt-in / help message and apply it, in one transaction.

        The consent is applied even when the message was stored before (a retried
        webhook after a failure), so a STOP can never be lost; but not when the same
        webhook delivery (``delivery_key``) was processed before, so an old START
        delivered again cannot undo a newer STOP.
        :return: False for a duplicate delivery.
        """
        with self._write(durable=True) as db:
            if delivery_key and not self._new_delivery(db, delivery_key, time.time()):
                return False
            row = self._insert_inbound(db, msg, session_key, msg.intent, msg.received_at)
            if msg.intent == "opt_out":
                db.execute("INSERT OR REPLACE INTO opt_outs VALUES (?, ?, ?, ?)",
                           (msg.channel_id, msg.sender, msg.text.strip().upper() or "STOP", time.time()))
            elif msg.intent == "opt_in":
                db.execute("DELETE FROM opt_outs WHERE channel_id = ? AND peer = ?", (msg.channel_id, msg.sender))
            if row is not None:
                self._add_usage(db, msg.channel_id, {"messages_in": 1, "units_in": msg.units})
            return row is not None

    @staticmethod
    def _insert_inbound(db: sqlite3.Connection, msg: InboundMessage, session_key: str, status: str,
                        at: float) -> int | None:
        files = [{"content_type": a.content_type} for a in msg.attachments] + [
            {"content_type": d.content_type, "dropped": d.reason or "not received"} for d in msg.dropped_attachments]
        if msg.provider_message_id is not None and db.execute(
                "INSERT OR IGNORE INTO inbound_ids VALUES (?, ?, ?)",
                (msg.channel_id, msg.provider_message_id, time.time())).rowcount == 0:
            return None  # stored before (within KEEP_KEYS_SECONDS)
        return db.execute(
            "INSERT INTO messages (channel_id, direction, provider_id, peer, session_key,"
            " text, status, units, media, created_at) VALUES (?, 'in', ?, ?, ?, ?, ?, ?, ?, ?)",
            (msg.channel_id, msg.provider_message_id, msg.sender, session_key, msg.text, status,
             msg.units, json.dumps(files) if files else None, at)).lastrowid

    # --- jobs ----------------------------------------------------------------------
    # Every change to a claimed job is fenced: it names the job's lease token and
    # fails with LeaseLost when another runner has claimed the job since.

    def claim(self, owner: str, lease: float) -> Job | None:
        """Take the next job that may run now, with a lease of ``lease`` seconds.

        A job may run when it is due, nobody holds a live lease on it, and it is the
        oldest unfinished job of its session, by the time its message was acknowledged
        (so a session's messages are answered in order, across every worker process;
        jobs of a store made before ``acked_at`` first), and no other job of its session
        is under a live lease (one that was stored late, older than the one running,
        waits for it).
        """
        pick = (f"SELECT j.id FROM jobs j WHERE j.state IN {_OPEN} AND j.not_before <= :now"
                " AND (j.lease_until IS NULL OR j.lease_until < :now)"
                f" AND j.id = (SELECT k.id FROM jobs k WHERE k.session_key = j.session_key"
                f"             AND k.state IN {_OPEN} ORDER BY k.acked_at, k.id LIMIT 1)"
                # (an older message stored late, e.g. moved from a dead worker's journal, waits for
                # the session's job under way: one at a time)
                # (``IN`` as well: the partial index jobs_in_session_order then serves the lookup)
                f" AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.session_key = j.session_key"
                f"             AND r.state IN {_OPEN} AND r.state = 'running' AND r.id != j.id"
                "              AND r.lease_until >= :now)"
                " ORDER BY j.not_before, j.id LIMIT 1")
        if self._conn().execute(pick, {"now": time.time()}).fetchone() is None:  # cheap, lock-free
            return None
        with self._write() as db:
            now = time.time()  # after the lock: a long wait for it must not shorten the lease
            hit = db.execute(pick, {"now": now}).fetchone()
            if hit is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?,"
                       " lease_token = lease_token + 1, attempts = attempts + 1, updated_at = ? WHERE id = ?",
                       (owner, now + lease, now, hit[0]))
            row = db.execute("SELECT id, inbound_id, channel_id, session_key, attempts, created_at, reply,"
                             " lease_token, first_failure_at, payload FROM jobs WHERE id = ?",
                             (hit[0],)).fetchone()
        # The job's message may still wait for its fsync (its commit is visible before): no
        # reply goes out for a message a power cut could still take back.
        try:
            self._barrier()
        except OSError:  # not on disk: give the job back at once (not after its lease)
            with self._write() as db:
                db.execute("UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL"
                           " WHERE id = ? AND lease_token = ?", (row[0], row[7]))
            raise
        return Job(*row[:9], message=message_from_dict(json.loads(row[9])))

    def next_due(self) -> float | None:
        """When the earliest queued job becomes due (``time.time()``), or None when none is
        queued. A runner that found nothing to claim waits until then (a journaled
        message's job is held ``ORDER_HOLD`` after its acknowledgement)."""
        row = self._conn().execute(f"SELECT min(not_before) FROM jobs WHERE state IN {_OPEN}"
                                   " AND state = 'queued'").fetchone()
        return row[0]

    def renew(self, jobs: Iterable[Job], lease: float) -> list[int]:
        """Extend the leases of ``jobs`` (those a live runner is working on).

        :return: ids of jobs whose lease was lost (claimed by someone else meanwhile). A job
            its runner finished (or put back for a retry) since the caller listed it is not lost.
        """
        lost = []
        with self._write() as db:
            until = time.time() + lease
            for job in jobs:
                if db.execute("UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_token = ?"
                              " AND state = 'running'", (until, job.id, job.token)).rowcount != 1:
                    row = db.execute("SELECT lease_token FROM jobs WHERE id = ?", (job.id,)).fetchone()
                    if row is None or row[0] != job.token:
                        lost.append(job.id)
        return lost

    @staticmethod
    def _own(db: sqlite3.Connection, job: Job) -> None:
        if db.execute("SELECT 1 FROM jobs WHERE id = ? AND lease_token = ? AND state = 'running'",
                      (job.id, job.token)).fetchone() is None:
            raise LeaseLost(f"job {job.id} was claimed by another runner")

    def complete(self, job: Job) -> None:
        self._finish(job, "done", None)

    def fail(self, job: Job, error: str) -> None:
        """End the job as failed; its parts that were not accepted are marked failed too."""
        self._finish(job, "failed", error)

    def retry_later(self, job: Job, not_before: float, error: str) -> None:
        """Give the job back to the queue, due at ``not_before``."""
        with self._write() as db:
            self._own(db, job)
            now = time.time()
            db.execute("UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                       " not_before = ?, error = ?, first_failure_at = COALESCE(first_failure_at, ?),"
                       " updated_at = ? WHERE id = ?", (not_before, error, now, now, job.id))

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        with self._write() as db:
            self._own(db, job)
            now = time.time()
            if state == "failed":
                db.execute("UPDATE messages SET status = 'failed', error = ?, updated_at = ?"
                           " WHERE job_id = ? AND direction = 'out' AND status IN ('pending', 'in-flight')",
                           (error, now, job.id))
            db.execute("UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, lease_until = NULL,"
                       " updated_at = ? WHERE id = ?", (state, error, now, job.id))

    def skip_job(self, job: Job, reason: str, counter: str) -> None:
        """Finish a job without sending what is left of it (opted out, over budget)."""
        with self._write() as db:
            self._own(db, job)
            now = time.time()
            left = db.execute("UPDATE messages SET status = 'skipped', error = ?, updated_at = ? WHERE job_id = ?"
                              " AND direction = 'out' AND status = 'pending'", (reason, now, job.id)).rowcount
            has_parts = db.execute("SELECT 1 FROM messages WHERE job_id = ? AND direction = 'out'",
                                   (job.id,)).fetchone()
            if not has_parts:  # nothing was prepared yet: leave a trace of the skipped reply
                db.execute("INSERT INTO messages (channel_id, direction, peer, session_key, text, status, error,"
                           " reply_to, job_id, part_no, created_at, updated_at, turn_at)"
                           f" VALUES (?, 'out', ?, ?, '', 'skipped', ?, ?, ?, 0, ?, ?, {_TURN_OF})",
                           (job.channel_id, job.message.sender, job.session_key, reason, job.inbound_id,
                            job.id, now, now, job.inbound_id))
            if left or not has_parts:
                self._add_usage(db, job.channel_id, {counter: 1})
            db.execute("UPDATE jobs SET state = 'done', error = ?, lease_owner = NULL, lease_until = NULL,"
                       " updated_at = ? WHERE id = ?", (reason, now, job.id))

    def job_states(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return dict(rows)

    # --- outbound parts ------------------------------------------------------------

    def parts(self, job: Job, texts: Sequence[str], peer: str, reply: str | None = None,
              media: Sequence[Sequence[dict]] | None = None) -> list[Part]:
        """The job's outbound parts, recorded as ``pending`` the first time (before any send).

        :param reply: the agent's reply, saved with the parts in the same transaction,
            when it was just made.
        :param media: per part, the files it carries (recorded with the part).
        """
        now = time.time()
        with self._write() as db:
            self._own(db, job)
            if reply is not None:
                db.execute("UPDATE jobs SET reply = ?, updated_at = ? WHERE id = ?", (reply, now, job.id))
            for n, text in enumerate(texts):
                files = media[n] if media is not None and n < len(media) and media[n] else None
                db.execute(
                    "INSERT OR IGNORE INTO messages (channel_id, direction, peer, session_key, text,"
                    " status, reply_to, job_id, part_no, media, created_at, updated_at, turn_at)"
                    f" VALUES (?, 'out', ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, {_TURN_OF})",
                    (job.channel_id, peer, job.session_key, text, job.inbound_id, job.id, n,
                     json.dumps(list(files)) if files else None, now, now, job.inbound_id))
            rows = db.execute("SELECT id, part_no, text, status, provider_id, media FROM messages"
                              " WHERE direction = 'out' AND job_id = ? ORDER BY part_no", (job.id,)).fetchall()
        return [Part(*r[:5], media=tuple(json.loads(r[5])) if r[5] else ()) for r in rows]

    def begin_part(self, job: Job, part: Part, units: int, daily_budget: int) -> str:
        """Right before the provider call, in one transaction: check the job is still ours,
        the recipient has not opted out and the day's budget has room; then reserve the
        units and mark the part ``in-flight``.

        :return: ``"ok"``, ``"opted_out"`` or ``"over_budget"``.
        """
        day = time.strftime("%Y-%m-%d", time.gmtime())
        with self._write() as db:
            self._own(db, job)
            if db.execute("SELECT 1 FROM opt_outs WHERE channel_id = ? AND peer = ?",
                          (job.channel_id, job.message.sender)).fetchone():
                return "opted_out"
            used = db.execute("SELECT value FROM usage WHERE channel_id = ? AND day = ? AND counter = 'units_out'",
                              (job.channel_id, day)).fetchone()
            if (used[0] if used else 0) + units > daily_budget:
                return "over_budget"
            self._add_usage(db, job.channel_id, {"units_out": units, "messages_out": 1})
            db.execute("UPDATE messages SET status = 'in-flight', units = ?, updated_at = ? WHERE id = ?",
                       (units, time.time(), part.id))
            return "ok"

    def part_sent(self, job: Job, part: Part, provider_id: str, status: str, *, finish: bool = False) -> bool:
        """Record the provider's id (and any delivery report that arrived before it).

        Not fenced: the provider accepted the part, which must be recorded whatever happened.
        :param finish: it was the job's last part: mark the job done in the same
            transaction, if the job is still ours.
        :return: False when ``finish`` was asked and the job is no longer ours.
        """
        with self._write() as db:
            self._part_sent(db, part, provider_id, status)
            if not finish:
                return True
            try:
                self._own(db, job)
            except LeaseLost:
                return False  # another runner has the job now; the part is recorded all the same
            db.execute("UPDATE jobs SET state = 'done', error = NULL, lease_owner = NULL, lease_until = NULL,"
                       " updated_at = ? WHERE id = ?", (time.time(), job.id))
            return True

    @staticmethod
    def _part_sent(db: sqlite3.Connection, part: Part, provider_id: str, status: str) -> None:
        early = db.execute("SELECT status, error FROM early_status WHERE provider_id = ?",
                           (provider_id,)).fetchone()
        if early:
            status, error = early
            db.execute("DELETE FROM early_status WHERE provider_id = ?", (provider_id,))
        else:
            error = None
        db.execute("UPDATE messages SET status = ?, provider_id = ?, error = ?, updated_at = ? WHERE id = ?",
                   (status, provider_id, error, time.time(), part.id))

    def part_unsent(self, job: Job, part: Part, units: int, error: str, *, status: str = "pending") -> None:
        """The provider did not take the part: give the reserved units back.

        ``status``: ``pending`` (try again), ``failed`` (for good) or ``in-flight``
        (unknown whether the provider took it: a retry sends it again, and says so).
        """
        with self._write() as db:
            if status != "in-flight":
                self._add_usage(db, job.channel_id, {"units_out": -units, "messages_out": -1})
            db.execute("UPDATE messages SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                       (status, error, time.time(), part.id))

    # --- messages an operator sends (``sophon send``) ------------------------------

    def begin_direct(self, channel_id: str, peer: str, session_key: str, text: str, units: int,
                     daily_budget: int) -> tuple[str, Part | None]:
        """Record one outbound message no inbound message asked for, ``in-flight``, after the
        same checks as a reply part (opt-out, daily budget), in one transaction.

        :return: ``("ok", part)``, ``("opted_out", None)`` or ``("over_budget", None)``.
        """
        day = time.strftime("%Y-%m-%d", time.gmtime())
        now = time.time()
        with self._write() as db:
            if db.execute("SELECT 1 FROM opt_outs WHERE channel_id = ? AND peer = ?", (channel_id, peer)).fetchone():
                return "opted_out", None
            used = db.execute("SELECT value FROM usage WHERE channel_id = ? AND day = ? AND counter = 'units_out'",
                              (channel_id, day)).fetchone()
            if (used[0] if used else 0) + units > daily_budget:
                return "over_budget", None
            self._add_usage(db, channel_id, {"units_out": units, "messages_out": 1})
            cur = db.execute(
                "INSERT INTO messages (channel_id, direction, peer, session_key, text, status, units,"
                " created_at, updated_at) VALUES (?, 'out', ?, ?, ?, 'in-flight', ?, ?, ?)",
                (channel_id, peer, session_key, text, units, now, now))
            return "ok", Part(cur.lastrowid, 0, text, "in-flight", None)

    def direct_unsent(self, channel_id: str, part: Part, units: int, error: str) -> None:
        """The provider refused an operator's message: record why and give the units back."""
        with self._write() as db:
            self._add_usage(db, channel_id, {"units_out": -units, "messages_out": -1})
            db.execute("UPDATE messages SET status = 'failed', error = ?, updated_at = ? WHERE id = ?",
                       (error, time.time(), part.id))

    # --- consent, usage, pacing ----------------------------------------------------

    def set_opt_out(self, channel_id: str, peer: str, keyword: str | None) -> None:
        """Record that ``peer`` opted out (``keyword`` e.g. STOP) or back in (``None``)."""
        with self._write(durable=True) as db:  # consent: fsynced, from a runner thread too
            if keyword is None:
                db.execute("DELETE FROM opt_outs WHERE channel_id = ? AND peer = ?", (channel_id, peer))
            else:
                db.execute("INSERT OR REPLACE INTO opt_outs VALUES (?, ?, ?, ?)",
                           (channel_id, peer, keyword, time.time()))

    def opted_out(self, channel_id: str, peer: str) -> bool:
        return self._conn().execute("SELECT 1 FROM opt_outs WHERE channel_id = ? AND peer = ?",
                                    (channel_id, peer)).fetchone() is not None

    def count(self, channel_id: str, **counters: int) -> None:
        """Add to today's (UTC) counters of a channel, e.g. ``count("sms", messages_in=1)``."""
        with self._write() as db:
            self._add_usage(db, channel_id, counters)

    @staticmethod
    def _add_usage(db: sqlite3.Connection, channel_id: str, counters: dict[str, int]) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        for name, value in counters.items():
            db.execute("INSERT INTO usage VALUES (?, ?, ?, ?) ON CONFLICT (channel_id, day, counter)"
                       " DO UPDATE SET value = value + excluded.value", (channel_id, day, name, value))

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Forget inbound message ids (``inbound_ids``: a message delivered again after that is
        stored again), webhook idempotency keys (``deliveries``) and unmatched early delivery
        reports (``early_status``) older than ``KEEP_KEYS_SECONDS``, ``PRUNE_BATCH`` rows per
        transaction. The message log is kept whole. :return: rows deleted, per table."""
        cutoff = (time.time() if now is None else now) - KEEP_KEYS_SECONDS
        gone: dict[str, int] = {}
        for table in ("inbound_ids", "deliveries", "early_status"):  # (rows are appended in time order)
            gone[table] = 0
            while True:
                with self._write() as db:
                    n = db.execute(f"DELETE FROM {table} WHERE rowid IN"
                                   f" (SELECT rowid FROM {table} WHERE at < ? LIMIT ?)", (cutoff, PRUNE_BATCH)).rowcount
                gone[table] += n
                if n < PRUNE_BATCH:
                    break
        return gone

    @staticmethod
    def _new_delivery(db: sqlite3.Connection, key: str, now: float) -> bool:
        """Remember a webhook delivery's idempotency key; False if it was remembered before."""
        return db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?)", (key, now)).rowcount == 1

    def usage(self, day: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """``{(channel_id, day): {counter: value}}``, for one day or all."""
        rows = self._conn().execute(
            "SELECT channel_id, day, counter, value FROM usage" + (" WHERE day = ?" if day else "")
            + " ORDER BY day, channel_id", (day,) if day else ()).fetchall()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for channel_id, d, name, value in rows:
            out.setdefault((channel_id, d), {})[name] = value
        return out

    def reserve_send_slot(self, address: str, units: int, per_second: float) -> float:
        """Book the next time ``address`` may send ``units``, across every process.

        :return: the time (``time.time()`` scale) at which the caller may send.
        """
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT next_at FROM pacing WHERE address = ?", (address,)).fetchone()
            start = max(now, row[0] if row else now)
            db.execute("INSERT INTO pacing VALUES (?, ?) ON CONFLICT (address) DO UPDATE SET"
                       " next_at = excluded.next_at", (address, start + units / per_second))
        return start

    # --- delivery status -----------------------------------------------------------

    def record_status(self, channel_id: str, provider_id: str, status: str, error: str | None,
                      rank: dict[str, int]) -> bool:
        """Move one of the channel's outbound messages forward by ``rank``; keep the error.

        ``read`` only follows ``delivered``. A report for a message whose id is not
        recorded yet (it can outrun our commit) is kept and applied when it is.
        :return: False when the report changes nothing.
        """
        with self._write(durable=True) as db:
            row = db.execute("SELECT id, status FROM messages WHERE direction = 'out' AND provider_id = ?"
                             " AND channel_id = ?", (provider_id, channel_id)).fetchone()
            if row is None:
                old = db.execute("SELECT status FROM early_status WHERE provider_id = ?", (provider_id,)).fetchone()
                if old is None or rank.get(status, -1) > rank.get(old[0], -1):
                    db.execute("INSERT OR REPLACE INTO early_status VALUES (?, ?, ?, ?)",
                               (provider_id, status, error, time.time()))
                return False
            current = row[1]
            if rank.get(status, -1) <= rank.get(current, -1) or (status == "read" and current != "delivered"):
                return False
            db.execute("UPDATE messages SET status = ?, error = COALESCE(?, error), updated_at = ?"
                       " WHERE id = ?", (status, error, time.time(), row[0]))
            return True

    def defer_address(self, address: str, until: float) -> None:
        """Nobody sends from ``address`` before ``until`` (the provider said Retry-After)."""
        with self._write() as db:
            db.execute("INSERT INTO pacing VALUES (?, ?) ON CONFLICT (address) DO UPDATE SET"
                       " next_at = MAX(next_at, excluded.next_at)", (address, until))

    # --- reading -------------------------------------------------------------------

    def history(self, session_key: str, current_id: int, limit: int = 20) -> list[Turn]:
        """The session's last ``limit`` turns before inbound row ``current_id``, oldest first.

        Conversation order, not insertion order: turns in the order their messages were
        acknowledged (the order ``claim`` answers them in; two workers' journals may store
        them the other way round), and a reply right after the message it answers, even
        when later messages were stored before it. Parts that failed or were never sent,
        consent keywords and rate-limited messages are not part of the conversation.
        """
        db = self._conn()
        current = db.execute("SELECT created_at FROM messages WHERE id = ?", (current_id,)).fetchone()
        if current is None:
            return []
        rows = db.execute(HISTORY, (session_key, current[0], current[0], current_id, limit)).fetchall()
        return [Turn("user" if d == "in" else "agent", t, p, at) for d, t, p, at in reversed(rows)]

    def recent(self, limit: int = 50) -> list[dict]:
        """The newest ``limit`` messages, newest first."""
        rows = self._conn().execute(
            "SELECT id, channel_id, direction, provider_id, peer, text, status, error, units, created_at, media"
            " FROM messages ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "channel_id", "direction", "provider_id", "peer", "text", "status", "error", "units",
                "created_at")
        return [{**dict(zip(keys, r)), "files": [{k: v for k, v in f.items() if k != "id"} for f in json.loads(r[10])]
                 if r[10] else []} for r in rows]
