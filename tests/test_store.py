"""The SQLite store: de-duplication and conversation-ordered history, on a real file."""
from __future__ import annotations

import sqlite3
import threading

from sophon_core.models import InboundMessage
from sophon_core.store import Store


def msg(mid, text, sender="+1555"):
    return InboundMessage("c1", mid, sender, "+1000", text)


def test_history_is_in_conversation_order_even_when_replies_are_stored_late(tmp_path):
    store = Store(tmp_path / "s.db")
    rows = [store.record_inbound(msg(f"m{i}", f"q{i}"), "s") for i in range(3)]
    store.record_outbound("c1", "+1555", "s", "a0", "queued", "SM0", reply_to=rows[0])
    store.record_outbound("c1", "+1555", "s", "a1", "failed", error="x", reply_to=rows[1])
    store.record_outbound("c1", "+1555", "s", "a1-retry", "queued", "SM1", reply_to=rows[1])
    got = [(t.role, t.text) for t in store.history("s", current_id=rows[2])]
    assert got == [("user", "q0"), ("agent", "a0"), ("user", "q1"), ("agent", "a1-retry")]
    assert [t.text for t in store.history("s", current_id=rows[2], limit=2)] == ["q1", "a1-retry"]
    assert store.history("other", current_id=rows[2]) == []


def test_inbound_is_stored_once_per_provider_id_even_from_many_threads(tmp_path):
    path = tmp_path / "s.db"
    stores = [Store(path) for _ in range(4)]  # like several gunicorn workers
    results = []
    barrier = threading.Barrier(8)

    def deliver(i):
        barrier.wait()
        results.append(stores[i % 4].record_inbound(msg("SMdup", "hi"), "s"))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_synchronous_mode_is_checked(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="FULL or NORMAL"):
        Store(tmp_path / "s.db", "OFF")
