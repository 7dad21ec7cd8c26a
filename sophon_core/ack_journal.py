"""Acknowledging webhooks through the worker's journal (``SOPHON_ACK_JOURNAL``, on by default).

A webhook's messages are acknowledged once they are appended to a file of the worker's own
and that file is synced (journal.py: the threads appending meanwhile share one
``fdatasync``). A thread of the worker (``JournalMover.run``) then moves them into the store
in batches of up to ``MOVE_BATCH``: every ``MOVE_EVERY`` seconds, or as soon as ``MOVE_BATCH``
wait. Why: with two or more workers the store's own group commits stay small and each commit
of one worker empties the other's SQLite page cache; one large batch per worker costs each
message less (README, Performance).

What it changes for the rest of the pipeline:

- A message reaches the store, and its job the runners, up to ``MOVE_EVERY`` (50 ms) after
  its acknowledgement. What happens to it (``queued``, ``duplicate``, ``rate-limited``) is
  known then: the mover reports it (``report``: metrics and log lines, as before).
- Order: messages acknowledged by different workers may reach the store in either order.
  A session's jobs run in the order their messages were acknowledged (the journal records
  the moment: ``Store.claim`` orders by it), and a journaled message's job runs no earlier
  than ``ORDER_HOLD`` (0.2 s) after it, by when an older message journaled by another
  worker is in the store (its mover takes it within ``MOVE_EVERY``). Only a mover that
  lags by more than that (a store stalled for longer) can let a younger message of the
  same sender be answered first. The hold adds up to 0.2 s to the reply, never to the
  acknowledgement.
- Opt-out, opt-in and help messages do not go through the journal: they are applied in
  the store before their acknowledgement (``Pipeline.accept``), as before. A message
  journaled before a STOP and moved after it gets a job, which the runner skips: it checks
  the opt-out before answering and before each part.
- A worker that dies leaves its journal behind, locked by nobody: every process that runs
  the pipeline looks for such files every ``ORPHAN_EVERY`` (50 ms) and moves them
  (``replay_orphans``), so they keep their place in their sessions' order too. Each message is stored once: a message already moved is a
  duplicate by its provider id or its delivery key, and a message with neither gets a key
  of its own when it is journaled (``journal:<random>``).
- A message the store refuses on its own (the others of its batch are stored) is not lost:
  it is appended to ``<journal>/rejected.journal`` with an error log line.
- Under ``SOPHON_SQLITE_SYNC=NORMAL`` (no fsync per acknowledgement) the journal is not used.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from .files import sync_folder
from .journal import UNFINISHED_AFTER, AckJournal, encode, orphans, remove_unfinished
from .models import InboundMessage
from .store import Store, message_dict, message_from_dict

log = logging.getLogger("sophon.journal")

MOVE_EVERY = 0.05  # seconds: the longest a journaled message waits before the mover takes it
# seconds after its acknowledgement before a journaled message's job may run: a session's jobs run
# in the order their messages were acknowledged (Store.claim), and an older message acknowledged by
# another worker must be in the store by then (its mover takes it within MOVE_EVERY)
ORDER_HOLD = 0.2
MOVE_BATCH = 64  # messages per store transaction of the mover (larger batches hold the GIL for long)
# seconds between looks for the journals of workers that died (a glob and a failed flock per live
# worker's file: some 50 µs). Shorter than ORDER_HOLD: a dead worker's last messages are in the store
# before the younger messages other workers acknowledged meanwhile may be answered.
ORPHAN_EVERY = 0.05
RETRY_EVERY = 1.0  # seconds before a move that failed (the store's disk, a lock) is tried again
MAX_TRIES = 3  # tries of a message the store refuses on its own before it is kept aside (REJECTED)
RETRY_ONE_EVERY = 0.25  # seconds between those tries (the worker's other messages wait meanwhile)
REJECTED = "rejected.journal"

# (message, session key, hourly limit, delivery key): what Store.accept_inbound takes
Entry = tuple[InboundMessage, str, "int | None", "str | None"]


def record(msg: InboundMessage, session: str, limit: int | None, key: str | None, acked_at: float) -> dict:
    """A journal record: the message, its session, hourly limit and delivery key (a key of its
    own when it has no provider id: a replay must not store it twice), and when it was acknowledged."""
    return {"m": message_dict(msg), "s": session, "l": limit, "t": acked_at,
            "k": key or (None if msg.provider_message_id else f"journal:{uuid.uuid4().hex}")}


class JournalMover:
    """A process's journal (opened at its first webhook) and the thread that moves it into the store.

    :param report: called once per stored message with the message, its outcome
        (``queued``, ``duplicate``, ``rate-limited``), its hourly limit and whether it came
        from a dead worker's journal.
    :param queued: called with the number of jobs a move queued (to wake the runners).
    """

    def __init__(self, folder: Path, store: Store, report: Callable[[InboundMessage, str, "int | None", bool], None],
                 queued: Callable[[int], None]):
        self.folder = Path(folder)
        self.store = store
        self.report = report
        self.queued = queued
        self._journal: AckJournal | None = None
        self._pid = 0
        self._open_lock = threading.Lock()
        self._move_lock = threading.Lock()  # one move at a time: the mover's, or a ``settle``
        self._hand: list[tuple[int, dict]] = []  # taken from the journal, not moved yet (a failed move)
        self._taken = 0  # the sequence number of the last record taken
        self._tries: dict[tuple[str, int], int] = {}  # failed tries of a record the store refused on its own
        self._tidy_at = 0.0  # (time.monotonic()) next look for files a dead process left unfinished

    # --- in the webhook request ------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Journal a webhook's messages: on disk when this returns (one sync for all of them).
        :raises OSError: the journal could not be written or synced: nothing is acknowledged."""
        now = time.time()  # (a webhook's messages 1 µs apart: their order in their session, whatever the move)
        self._current().append_all([record(msg, session, limit, key, now + n * 1e-6)
                                    for n, (msg, session, limit, key) in enumerate(entries)])

    def _current(self) -> AckJournal:
        """This process's journal (a forked child opens its own)."""
        journal = self._journal
        if journal is None or self._pid != os.getpid():
            with self._open_lock:
                if self._journal is None or self._pid != os.getpid():
                    if self._pid != os.getpid():  # (forked: the parent's hand is not ours)
                        self._hand, self._tries = [], {}
                    self._journal, self._pid = AckJournal(self.folder), os.getpid()
                    self._journal.wake_at = MOVE_BATCH
                journal = self._journal
        return journal

    # --- the mover thread ------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Move journaled messages into the store until ``stop``, then move what is left and
        close the journal (its files are deleted once empty)."""
        scan_at = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= scan_at:
                    scan_at = time.monotonic() + ORPHAN_EVERY
                    self.replay_orphans()
                journal = self._journal if self._pid == os.getpid() else None
                if journal is None:  # (no webhook yet)
                    stop.wait(ORPHAN_EVERY)
                    continue
                if not self._hand:
                    journal.wait(MOVE_EVERY)
                self._move_some(journal)
                if self._hand:  # a message refused on its own stays in hand: tried again in a moment
                    stop.wait(RETRY_ONE_EVERY)
            except Exception:  # the store failed (disk full, locked): never let the mover die
                log.exception("moving journaled messages into the store failed; trying again in %.1f s",
                              RETRY_EVERY)
                stop.wait(RETRY_EVERY)
        self.close()

    def kick(self) -> None:
        """Wake the mover (it is stopping)."""
        if self._journal is not None and self._pid == os.getpid():
            self._journal.kick()

    def _move_some(self, journal: AckJournal) -> int:
        """Move the messages in hand, or else the next ones of the journal; :return: how many."""
        with self._move_lock:
            if not self._hand:
                self._hand = journal.take(MOVE_BATCH)
                if self._hand:
                    self._taken = self._hand[-1][0]
            if not self._hand:
                return 0
            n = len(self._hand)
            self._hand, _ = self._move(self._hand, source=journal.id)
            # (what failed stays in hand and in the file: moved up to just before it)
            journal.moved(self._hand[0][0] - 1 if self._hand else self._taken)
            return n - len(self._hand)

    def settle(self) -> None:
        """Move every message journaled so far into the store now (tests, shutdown).
        :raises Exception: the store failed (they stay journaled)."""
        journal = self._journal if self._pid == os.getpid() else None
        while journal is not None and self._move_some(journal):
            pass

    def close(self) -> None:
        """Move what is left, then close the journal: its files are deleted when everything in
        them was moved; else they are left for another process to move (``replay_orphans``).
        A webhook that comes after this opens a new journal, left for another process too."""
        with self._open_lock:
            journal = self._journal if self._pid == os.getpid() else None
            self._journal = None  # (one closer: the mover thread, or shutdown after it)
        if journal is None:
            return
        try:
            for _ in range(MAX_TRIES):  # (a message refused on its own: its tries)
                while self._move_some(journal):
                    pass
                if not self._hand:
                    break
        except Exception:
            log.exception("the messages left in journal %s could not be moved into the store before this "
                          "process stopped; another process moves them", journal.id)
        with self._move_lock:  # (what is left stays in the file, for another process)
            self._hand = []
        journal.close()

    def _move(self, records: Sequence[tuple[int, dict]], source: str, replayed: bool = False) -> tuple[list, int]:
        """Store ``records`` (one transaction, synced), then report each outcome.

        A message the store refuses on its own (the others are stored) is tried again by the
        caller, ``MAX_TRIES`` times in all, ``RETRY_ONE_EVERY`` apart; then it is kept aside
        (``_reject``). A record that cannot be read (a file of another version) is kept
        aside at once.
        :param source: the journal's id or orphan file's name (with the sequence number: a record's identity).
        :return: the records to try again, and how many were new to the store (not duplicates).
        :raises Exception: the transaction failed: none of them is known to be stored."""
        items, again = [], []
        for seq, record in records:
            try:
                acked = float(record["t"])
                items.append(((message_from_dict(record["m"]), record["s"], record["l"], record["k"], acked,
                               acked + ORDER_HOLD), (seq, record)))
            except (KeyError, TypeError, ValueError) as exc:
                if not self._reject(record, exc):
                    again.append((seq, record))
        results = self.store.accept_batch([args for args, _ in items])
        queued = new = 0
        for ((msg, _, limit, *_), (seq, record)), (result, error) in zip(items, results):
            if error is not None:
                tries = self._tries[source, seq] = self._tries.get((source, seq), 0) + 1
                if tries < MAX_TRIES:
                    log.warning("acknowledged message %s on %s could not be stored (%s: %s); trying again",
                                msg.provider_message_id, msg.channel_id, type(error).__name__, error)
                    again.append((seq, record))
                    continue
                if self._reject(record, error):
                    del self._tries[source, seq]
                else:  # (kept in hand: tried again, and kept aside again if it fails again)
                    again.append((seq, record))
                continue
            self._tries.pop((source, seq), None)
            new += result[0] != "duplicate"
            queued += result[0] == "queued"
            self.report(msg, result[0], limit, replayed)
        if queued:
            self.queued(queued)
        again.sort(key=lambda item: item[0])  # (the caller marks the journal moved up to the first of them)
        return again, new

    def _reject(self, record: dict, error: BaseException) -> bool:
        """Keep a message the store refused, or a record it cannot read, in ``rejected.journal``
        (synced), with an error log line.
        :return: False when that file could not be written (the caller keeps the record in hand)."""
        path = self.folder / REJECTED
        whole = record if isinstance(record, dict) else {"record": record}  # (a record of another version)
        message = whole["m"] if isinstance(whole.get("m"), dict) else {}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, encode(int(time.time() * 1000), {**whole, "error": str(error)}))
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError:
            log.exception("could not keep acknowledged message %s on %s aside in %s; it stays journaled",
                          message.get("provider_message_id"), message.get("channel_id"), path)
            return False
        log.error("acknowledged message %s on %s could not be stored (%s: %s); kept in %s",
                  message.get("provider_message_id"), message.get("channel_id"), type(error).__name__,
                  error, path)
        return True

    # --- journals of workers that died ------------------------------------------------

    def replay_orphans(self) -> int:
        """Move the journals of processes that died into the store, and delete them.
        :return: how many messages were in them."""
        total = 0
        if time.monotonic() >= self._tidy_at:  # (rarely: a glob of the folder)
            self._tidy_at = time.monotonic() + UNFINISHED_AFTER
            remove_unfinished(self.folder)
        for orphan in orphans(self.folder):
            name = orphan.path.name
            if orphan.damaged:
                log.error("%s: %d whole record(s) follow a damaged line and are not moved (%d bytes from "
                          "the damage on); the file's disk may be failing", name, orphan.damaged,
                          orphan.dropped_bytes)
            elif orphan.dropped_bytes:
                log.warning("%s: its last %d bytes are an unfinished write, never acknowledged; skipped",
                            name, orphan.dropped_bytes)
            again, stored = [], 0
            try:
                for at in range(0, len(orphan.records), MOVE_BATCH):
                    retry, new = self._move(orphan.records[at:at + MOVE_BATCH], source=name, replayed=True)
                    again, stored = again + retry, stored + new
            except Exception:
                orphan.release()  # (tried again at the next look)
                raise
            if again:  # (those stored already are duplicates next time)
                orphan.release()
                continue
            if orphan.damaged:  # kept for a person to look at (renamed while still locked: not moved twice)
                os.replace(orphan.path, orphan.path.with_suffix(".damaged"))
                orphan.release()
                sync_folder(self.folder)  # (the new name survives a power cut: never moved twice)
            else:
                orphan.discard()
            if orphan.records:
                log.info("moved %d message(s) from %s, the journal of a worker that stopped before moving "
                         "them (%d new to the store)", len(orphan.records), name, stored)
            total += len(orphan.records)
        return total
