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

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .models import DroppedAttachment, InboundMessage, Turn

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
    created_at  REAL NOT NULL,
    updated_at  REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_inbound_once
    ON messages (channel_id, provider_id) WHERE direction = 'in';
CREATE UNIQUE INDEX IF NOT EXISTS messages_part_once
    ON messages (job_id, part_no) WHERE direction = 'out';
CREATE INDEX IF NOT EXISTS messages_by_turn ON messages (session_key, COALESCE(reply_to, id), id);

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
    payload     TEXT NOT NULL,    -- the InboundMessage as JSON
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

CREATE TABLE IF NOT EXISTS deliveries (  -- webhook idempotency keys already processed
    key         TEXT PRIMARY KEY,
    at          REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS pacing (
    address     TEXT PRIMARY KEY,
    next_at     REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS messages_by_provider_id ON messages (provider_id) WHERE direction = 'out';
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (state, not_before) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_session ON jobs (session_key, id) WHERE state IN ('queued', 'running');
"""

_OPEN = "('queued', 'running')"


@dataclass(frozen=True)
class Job:
    id: int
    inbound_id: int
    channel_id: str
    session_key: str
    attempts: int
    created_at: float
    reply: str | None
    message: InboundMessage


@dataclass(frozen=True)
class Part:
    id: int
    part_no: int
    text: str
    status: str  # pending, in-flight, then the provider's (queued, sent, ...), or failed / skipped
    provider_id: str | None


class Store:
    """The message log and job queue. ``path`` is created with its folder on first use."""

    def __init__(self, path: Path, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"SQLite synchronous mode must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)  # idempotent; executescript commits by itself

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged message survives power loss; NORMAL: process crashes only.
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (no lock upgrade deadlocks between workers)."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- inbound -------------------------------------------------------------------

    def accept_inbound(self, msg: InboundMessage, session_key: str) -> int | None:
        """Store an inbound message and its job, once per (channel, provider message id),
        and count it in today's usage, all in one transaction.

        :return: the message's row id, or ``None`` if it was stored before (a retried webhook).
        """
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO messages (channel_id, direction, provider_id, peer, session_key,"
                " text, status, units, created_at) VALUES (?, 'in', ?, ?, ?, ?, 'received', ?, ?)",
                (msg.channel_id, msg.provider_message_id, msg.sender, session_key, msg.text, msg.units,
                 msg.received_at))
            if cur.rowcount != 1:
                return None
            row = cur.lastrowid
            db.execute(
                "INSERT INTO jobs (inbound_id, channel_id, session_key, state, not_before, payload,"
                " created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (row, msg.channel_id, session_key, now, json.dumps(asdict(msg)), now, now))
            self._add_usage(db, msg.channel_id, {"messages_in": 1, "units_in": msg.units})
            return row

    def record_inbound(self, msg: InboundMessage, session_key: str, status: str = "received") -> int | None:
        """Store an inbound message that needs no job (e.g. an opt-out keyword)."""
        with self._write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO messages (channel_id, direction, provider_id, peer, session_key,"
                " text, status, units, created_at) VALUES (?, 'in', ?, ?, ?, ?, ?, ?, ?)",
                (msg.channel_id, msg.provider_message_id, msg.sender, session_key, msg.text, status,
                 msg.units, msg.received_at))
            return cur.lastrowid if cur.rowcount == 1 else None

    # --- jobs ----------------------------------------------------------------------

    def claim(self, owner: str, lease: float) -> Job | None:
        """Take the next job that may run now, with a lease of ``lease`` seconds.

        A job may run when it is due, nobody holds a live lease on it, and it is the
        oldest unfinished job of its session (so a session's messages are answered in
        order, across every worker process).
        """
        now = time.time()
        pick = (f"SELECT j.id FROM jobs j WHERE j.state IN {_OPEN} AND j.not_before <= :now"
                " AND (j.lease_until IS NULL OR j.lease_until < :now)"
                f" AND j.id = (SELECT MIN(k.id) FROM jobs k WHERE k.session_key = j.session_key"
                f"             AND k.state IN {_OPEN})"
                " ORDER BY j.not_before, j.id LIMIT 1")
        if self._conn().execute(pick, {"now": now}).fetchone() is None:  # cheap, lock-free check
            return None
        with self._write() as db:
            hit = db.execute(pick, {"now": now}).fetchone()
            if hit is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?,"
                       " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                       (owner, now + lease, now, hit[0]))
            row = db.execute("SELECT id, inbound_id, channel_id, session_key, attempts, created_at, reply,"
                             " payload FROM jobs WHERE id = ?", (hit[0],)).fetchone()
        payload = json.loads(row[7])
        payload["dropped_attachments"] = tuple(DroppedAttachment(**d) for d in payload["dropped_attachments"])
        return Job(*row[:7], message=InboundMessage(**payload))

    def renew(self, owner: str, lease: float) -> int:
        """Extend every lease ``owner`` holds; returns how many."""
        now = time.time()
        with self._write() as db:
            return db.execute("UPDATE jobs SET lease_until = ? WHERE lease_owner = ? AND state = 'running'",
                              (now + lease, owner)).rowcount

    def save_reply(self, job_id: int, reply: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET reply = ?, updated_at = ? WHERE id = ?", (reply, time.time(), job_id))

    def complete(self, job_id: int) -> None:
        self._finish(job_id, "done", None)

    def fail(self, job_id: int, error: str) -> None:
        self._finish(job_id, "failed", error)

    def retry_later(self, job_id: int, not_before: float, error: str) -> None:
        """Give the job back to the queue, due at ``not_before``."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                       " not_before = ?, error = ?, updated_at = ? WHERE id = ?",
                       (not_before, error, time.time(), job_id))

    def _finish(self, job_id: int, state: str, error: str | None) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, lease_until = NULL,"
                       " updated_at = ? WHERE id = ?", (state, error, time.time(), job_id))

    def job_states(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return dict(rows)

    # --- outbound parts ------------------------------------------------------------

    def parts(self, job: Job, texts: Sequence[str], peer: str) -> list[Part]:
        """The job's outbound parts, recorded as ``pending`` the first time (before any send)."""
        now = time.time()
        with self._write() as db:
            for n, text in enumerate(texts):
                db.execute(
                    "INSERT OR IGNORE INTO messages (channel_id, direction, peer, session_key, text,"
                    " status, reply_to, job_id, part_no, created_at, updated_at)"
                    " VALUES (?, 'out', ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                    (job.channel_id, peer, job.session_key, text, job.inbound_id, job.id, n, now, now))
            rows = db.execute("SELECT id, part_no, text, status, provider_id FROM messages"
                              " WHERE direction = 'out' AND job_id = ? ORDER BY part_no", (job.id,)).fetchall()
        return [Part(*r) for r in rows]

    def set_part(self, part_id: int, status: str, *, provider_id: str | None = None,
                 error: str | None = None, units: int | None = None) -> None:
        with self._write() as db:
            db.execute("UPDATE messages SET status = ?, provider_id = COALESCE(?, provider_id), error = ?,"
                       " units = COALESCE(?, units), updated_at = ? WHERE id = ?",
                       (status, provider_id, error, units, time.time(), part_id))

    def skip_unsent(self, job_id: int, reason: str) -> None:
        """Mark the job's parts that never reached the provider as skipped."""
        with self._write() as db:
            db.execute("UPDATE messages SET status = 'skipped', error = ?, updated_at = ? WHERE job_id = ?"
                       " AND direction = 'out' AND status = 'pending'", (reason, time.time(), job_id))

    # --- consent, usage, pacing ----------------------------------------------------

    def set_opt_out(self, channel_id: str, peer: str, keyword: str | None) -> None:
        """Record that ``peer`` opted out (``keyword`` e.g. STOP) or back in (``None``)."""
        with self._write() as db:
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

    def seen_delivery(self, key: str) -> bool:
        """True if a webhook delivery with this idempotency key was processed before."""
        return self._conn().execute("SELECT 1 FROM deliveries WHERE key = ?", (key,)).fetchone() is not None

    def record_delivery(self, key: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?)", (key, time.time()))

    def usage(self, day: str | None = None) -> dict[tuple[str, str], dict[str, int]]:
        """``{(channel_id, day): {counter: value}}``, for one day or all."""
        rows = self._conn().execute(
            "SELECT channel_id, day, counter, value FROM usage" + (" WHERE day = ?" if day else "")
            + " ORDER BY day, channel_id", (day,) if day else ()).fetchall()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for channel_id, d, name, value in rows:
            out.setdefault((channel_id, d), {})[name] = value
        return out

    def used_today(self, channel_id: str, counter: str) -> int:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        row = self._conn().execute("SELECT value FROM usage WHERE channel_id = ? AND day = ? AND counter = ?",
                                   (channel_id, day, counter)).fetchone()
        return row[0] if row else 0

    def inbound_since(self, channel_id: str, peer: str, since: float) -> int:
        return self._conn().execute(
            "SELECT COUNT(*) FROM messages WHERE direction = 'in' AND channel_id = ? AND peer = ?"
            " AND created_at >= ?", (channel_id, peer, since)).fetchone()[0]

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

    def record_status(self, provider_id: str, status: str, error: str | None, rank: dict[str, int]) -> bool:
        """Move an outbound message's status forward only (by ``rank``); keep the error.

        :return: False when the message is unknown or the status would go backwards.
        """
        with self._write() as db:
            row = db.execute("SELECT id, status FROM messages WHERE direction = 'out' AND provider_id = ?",
                             (provider_id,)).fetchone()
            if row is None or rank.get(status, -1) <= rank.get(row[1], -1):
                return False
            db.execute("UPDATE messages SET status = ?, error = COALESCE(?, error), updated_at = ?"
                       " WHERE id = ?", (status, error, time.time(), row[0]))
            return True

    # --- reading -------------------------------------------------------------------

    def history(self, session_key: str, current_id: int, limit: int = 20) -> list[Turn]:
        """The session's last ``limit`` turns before inbound row ``current_id``, oldest first.

        Conversation order, not insertion order: a reply sits right after the
        message it answers, even when later messages were stored before it.
        Parts that failed or were never sent are not part of the conversation.
        """
        rows = self._conn().execute(
            "SELECT direction, text, peer, created_at FROM messages WHERE session_key = ?"
            " AND COALESCE(reply_to, id) < ?"
            " AND (direction = 'in' OR status NOT IN ('failed', 'skipped', 'pending'))"
            " ORDER BY COALESCE(reply_to, id) DESC, id DESC LIMIT ?",
            (session_key, current_id, limit)).fetchall()
        return [Turn("user" if d == "in" else "agent", t, p, at) for d, t, p, at in reversed(rows)]

    def recent(self, limit: int = 50) -> list[dict]:
        """The newest ``limit`` messages, newest first."""
        rows = self._conn().execute(
            "SELECT id, channel_id, direction, provider_id, peer, text, status, error, units, created_at"
            " FROM messages ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "channel_id", "direction", "provider_id", "peer", "text", "status", "error", "units",
                "created_at")
        return [dict(zip(keys, r)) for r in rows]
