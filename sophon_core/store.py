"""SQLite state under ``SOPHON_DATA_DIR``: message log, sessions, dedupe.

One connection per thread; WAL mode so several gunicorn workers can write.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from .models import InboundMessage, Turn

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
    created_at  REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_inbound_once
    ON messages (channel_id, provider_id) WHERE direction = 'in';
CREATE INDEX IF NOT EXISTS messages_by_turn ON messages (session_key, COALESCE(reply_to, id), id);
"""


class Store:
    """The message log. ``path`` is created with its folder on first use."""

    def __init__(self, path: Path, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"SQLite synchronous mode must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as db:
            db.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged message survives power loss; NORMAL: process crashes only.
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = db
        return db

    def record_inbound(self, msg: InboundMessage, session_key: str) -> int | None:
        """Store an inbound message once; ``None`` if (channel, provider id) was seen before."""
        cur = self._conn().execute(
            "INSERT OR IGNORE INTO messages (channel_id, direction, provider_id, peer, session_key,"
            " text, status, created_at) VALUES (?, 'in', ?, ?, ?, ?, 'received', ?)",
            (msg.channel_id, msg.provider_message_id, msg.sender, session_key, msg.text,
             msg.received_at))
        return cur.lastrowid if cur.rowcount == 1 else None

    def record_outbound(self, channel_id: str, peer: str, session_key: str, text: str,
                        status: str, provider_id: str | None = None,
                        error: str | None = None, reply_to: int | None = None) -> int:
        """Store one outbound message; ``reply_to`` is the inbound row it answers."""
        cur = self._conn().execute(
            "INSERT INTO messages (channel_id, direction, provider_id, peer, session_key, text,"
            " status, error, reply_to, created_at) VALUES (?, 'out', ?, ?, ?, ?, ?, ?, ?, ?)",
            (channel_id, provider_id, peer, session_key, text, status, error, reply_to, time.time()))
        return cur.lastrowid

    def set_status(self, row_id: int, status: str, error: str | None = None) -> None:
        self._conn().execute("UPDATE messages SET status = ?, error = ? WHERE id = ?",
                             (status, error, row_id))

    def history(self, session_key: str, current_id: int, limit: int = 20) -> list[Turn]:
        """The session's last ``limit`` turns before inbound row ``current_id``, oldest first.

        Conversation order, not insertion order: a reply sits right after the
        message it answers, even when later messages were stored before it.
        """
        rows = self._conn().execute(
            "SELECT direction, text, peer, created_at FROM messages WHERE session_key = ?"
            " AND COALESCE(reply_to, id) < ? AND (direction = 'in' OR status != 'failed')"
            " ORDER BY COALESCE(reply_to, id) DESC, id DESC LIMIT ?",
            (session_key, current_id, limit)).fetchall()
        return [Turn("user" if d == "in" else "agent", t, p, at) for d, t, p, at in reversed(rows)]

    def recent(self, limit: int = 50) -> list[dict]:
        rows = self._conn().execute(
            "SELECT id, channel_id, direction, provider_id, peer, text, status, error, created_at"
            " FROM messages ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "channel_id", "direction", "provider_id", "peer", "text", "status", "error",
                "created_at")
        return [dict(zip(keys, r)) for r in rows]
