"""Spies and thread helpers shared by the store's tests (test_store_batch, test_store_sync,
test_sender): they watch what the store does (its commits, its fsyncs); nothing here fakes it.
And stores as an older version left them (test_store, test_ack_journal)."""
from __future__ import annotations

import os
import sqlite3
import threading
import time

from sophon_core import store as store_mod

JOIN = 20.0  # seconds any thread of a test may take before it counts as hung


def as_older_version(path, *, table: str, column: str, index: str, old_index: str) -> None:
    """Make the store at ``path`` what a version before ``column`` left: no ``column`` in
    ``table``, nor ``index``, made on it; ``old_index`` (its CREATE statement) instead."""
    with sqlite3.connect(path) as db:
        db.execute(f"DROP INDEX {index}")
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute(old_index)


def index_names(path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA index_list({table})")}


def run_threads(targets):
    """Start a thread per callable (all released at once); :return: {i: ("ok", value) | ("error", exc)}."""
    results: dict[int, tuple] = {}
    gate = threading.Barrier(len(targets))

    def run(i, fn):
        gate.wait(JOIN)
        try:
            results[i] = ("ok", fn())
        except Exception as exc:
            results[i] = ("error", exc)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"accept_inbound never returned in {len(hung)} thread(s)"
    return results


def spy_batches(store, monkeypatch, delay=0.0):
    """Record each batch's provider ids (and optionally slow each commit down)."""
    batches: list[list[str]] = []
    real = store._commit_batch

    def commit(batch):
        batches.append([item.args[0].provider_message_id for item in batch])
        if delay:
            time.sleep(delay)
        return real(batch)

    monkeypatch.setattr(store, "_commit_batch", commit)
    return batches


class FsyncLog:
    """os.fdatasync (how the store syncs its log) as seen by the store: an event list ("begin", i) / ("end", i) / ("fail", i),
    with a short sleep in each fsync so that commits and waits overlap it."""

    def __init__(self, monkeypatch, fail=lambda: False):
        self.events, self.lock, self.fail = [], threading.Lock(), fail
        self.real = os.fdatasync
        monkeypatch.setattr(store_mod.os, "fdatasync", self)

    def add(self, *event) -> int:
        with self.lock:
            self.events.append(event)
            return len(self.events) - 1

    def __call__(self, fd):
        i = self.add("begin", None)
        time.sleep(0.003)
        if self.fail():
            self.add("fail", i)
            raise OSError(5, "Input/output error")
        self.real(fd)
        self.add("end", i)
