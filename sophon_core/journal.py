"""A worker's journal of acknowledged webhook messages (the file layer; ack_journal.py uses it).

Why: with two workers the store's group commits stay small and each commit of one worker
empties the other's SQLite page cache (README, Performance: "Built: a journal on the
acknowledgement's path"). With a journal a webhook is acknowledged once its
message is appended to a file of its worker's own and that file is synced; a thread of the
worker then moves the journal's messages into the store in large batches.

This module is the file alone, without the store:

- ``AckJournal(folder)``: a process's files, ``<folder>/<pid>-<ns>.log``, each locked
  (``flock``) while the process lives, so that another process can tell a dead worker's
  files from a live one's. ``append`` returns once the record is on disk (a group commit:
  the threads that append meanwhile share the next ``fdatasync``); past ``max_bytes`` the
  next sync goes to another file. ``take`` hands the mover the records appended since its
  last call; ``moved`` tells the journal that every record up to a sequence number is in
  the store and synced: the files holding only such records are rewound for reuse, and so
  is the current one once nothing in it is left to move and no append is under way.
- ``orphans(folder)``: the files of processes that died, each with its records, locked by
  the caller while it moves them; ``discard`` deletes one once its records are in the store.
- ``remove_unfinished(folder)``: deletes the ``.new`` files (no records) of processes that
  died while making one.

A record is one line: its JSON (``{"seq": n, "record": ...}``), a tab, and the CRC-32 of
the JSON in hex. A file is reused rather than cut back or deleted, so that an append
overwrites blocks the file has (``_new_file`` writes it whole, zeros after its header):
the append's ``fdatasync`` then writes those blocks alone, without committing the
filesystem's own journal. A file starts with a header line (sequence number 0) giving the
highest sequence number of its earlier rounds (``after``); records with higher numbers
follow it, then whatever earlier rounds left, which reading ignores.

Reading stops at the first line that is not a whole record of the current round, as
SQLite's recovery stops at the first bad frame of its log: a crash can only tear the last
sync's write (one ``write`` of several lines, none of them acknowledged yet: their
``append`` had not returned). Whole records of the current round found after a bad line
mean damage to data synced before (``Read.damaged``): they are counted, for the caller to
report, and not used.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .files import sync_folder

SUFFIX = ".log"


def encode(seq: int, record: dict) -> bytes:
    return line(seq, json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode())


def line(seq: int, record_json: bytes) -> bytes:
    """A record's line, from its JSON (encoded before, outside the journal's lock)."""
    body = b'{"seq":%d,"record":%s}' % (seq, record_json)
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


@dataclass
class Read:
    records: list[tuple[int, dict]]  # the whole records before the first bad line, in order
    dropped_bytes: int = 0  # from the first bad line on (a torn write), up to older rounds' lines
    damaged: int = 0  # whole records of this round after the first bad line: damage, not a torn write


def header(after: int) -> bytes:
    """A file's first line (``HEADER_BYTES`` long): the records that follow it have sequence
    numbers above ``after``; lines with lower ones are left from before the file was reused."""
    return line(0, b'{"after":%d%s}' % (after, b" " * (20 - len(str(after)))))


HEADER_BYTES = len(header(0))


def read_records(path: Path) -> Read:
    """The records of a journal file: after its header, the whole records of its current
    round (sequence numbers above the header's ``after``), up to the first line that is not
    one. A file without a header (an older version's, or
    ``rejected.journal``) is read from its start."""
    data = Path(path).read_bytes().rstrip(b"\0")  # (a new file is made of zeros: see _new_file)
    out: list[tuple[int, dict]] = []
    at, after = 0, 0
    end = data.find(b"\n")
    first = _parse(data[:end]) if end >= 0 else None
    if first is not None and first[0] == 0 and isinstance(first[1], dict) and "after" in first[1]:
        at, after = end + 1, int(first[1]["after"])
    while at < len(data):
        end = data.find(b"\n", at)
        parsed = _parse(data[at:end]) if end >= 0 else None
        if parsed is not None and parsed[0] > after:
            out.append(parsed)
            at = end + 1
            continue
        if parsed is not None:  # an older round's line (see ``header``): this round ends here
            return Read(out)
        # not a whole line: a torn write, or what is left of an older round's line (then an older
        # round's whole lines follow)
        later = [_parse(line) for line in data[at:].split(b"\n")[1:]]
        damaged = sum(p is not None and p[0] > after for p in later)
        older = any(p is not None and p[0] <= after for p in later)
        return Read(out, 0 if older and not damaged else len(data) - at, damaged)
    return Read(out)


def _parse(line: bytes) -> tuple[int, dict] | None:
    body, sep, crc = line.rpartition(b"\t")
    if not sep:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        item = json.loads(body)
        return int(item["seq"]), item["record"]
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class _File:
    path: Path
    fd: int
    size: int = 0  # of its acknowledged records in this round (they start after its header)
    last_seq: int = 0  # of the last record written to it (0: none yet)
    failed: bool = False  # a write or sync failed: nothing more is appended to it


@dataclass
class _Waiter:
    first: int  # the sequence number of its first record
    records: list[dict]
    lines: bytes
    lock: threading.Lock = field(default_factory=threading.Lock)
    lead: bool = False
    error: BaseException | None = None


SPARES = 2  # files kept for reuse once everything in them is moved


class AckJournal:
    def __init__(self, folder: Path, max_bytes: int = 1 << 20):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._files = [self._new_file()]  # oldest first; the last one is written to
        self._spares: list[_File] = []  # files whose records are all moved, rewound for reuse
        self.id = self._files[0].path.stem  # (``<pid>-<ns>`` of its first file)
        self._lock = threading.Lock()  # guards what follows (and _files)
        self._ready = threading.Condition(self._lock)  # notified when ``wake_at`` records wait for the mover
        self.wake_at = 64
        self._seq = 0  # the last sequence number given out
        self._waiting: list[_Waiter] = []  # appends for the next sync
        self._syncing = False
        self._untaken: list[tuple[int, dict]] = []  # on disk, not yet handed to the mover
        # A failed write or sync leaves the file's end unknown (part of a line, or lines the disk
        # may not hold: Linux reports a failed write-back once): no append to it after that, so
        # that whatever it acknowledged before stays readable (see read_records); the next sync
        # starts a new file (_File.failed).
        self.syncs = 0
        self._moved = 0  # every record up to this sequence number is moved (see ``moved``)
        self._closed = False

    @property
    def path(self) -> Path:
        """The file appends go to now."""
        return self._files[-1].path

    def files(self) -> list[Path]:
        with self._lock:
            return [f.path for f in self._files]

    def _new_file(self) -> _File:
        path = self.folder / f"{os.getpid()}-{time.time_ns()}{SUFFIX}"
        # Made under another name, locked, then renamed: a process looking for orphans never
        # sees it unlocked (it would take it for a dead process's file and delete it).
        making = path.with_suffix(".new")
        fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (a new file, under a name nobody looks for)
            # Written whole before use (its header, then zeros): an append then overwrites blocks the
            # file has, and its fdatasync writes those blocks alone. An append that grows a file
            # also commits the filesystem's journal (the file's new size and blocks), which waits
            # for the store's writes of the moment too (README, Performance).
            _write_at(fd, header(0) + bytes(self.max_bytes), 0)
            os.fdatasync(fd)
            os.rename(making, path)
        except BaseException:
            os.close(fd)
            making.unlink(missing_ok=True)
            raise
        sync_folder(self.folder)  # the new file's name survives a power cut
        return _File(path, fd)

    @staticmethod
    def _rewind(f: _File) -> None:
        """Reuse ``f``, whose records are all moved: a new header says that its next records
        are the ones numbered above its last; the older ones left after it are ignored
        (``read_records``)."""
        _write_at(f.fd, header(f.last_seq), 0)
        os.fdatasync(f.fd)
        f.size = 0

    def append(self, record: dict) -> int:
        """Write ``record`` and return its sequence number once it is on disk.
        :raises OSError: the write or the sync failed: the record is not acknowledged (the
            next append goes to a new file)."""
        return self.append_all([record])[0]

    def append_all(self, records: list[dict]) -> list[int]:
        """Write ``records`` (in order, with one sync) and return their sequence numbers once
        they are on disk.
        :raises OSError: as ``append``."""
        encoded = [json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() for r in records]
        with self._lock:
            if self._closed:
                raise OSError("the journal is closed (the process is stopping)")
            first = self._seq + 1
            self._seq += len(records)
            me = _Waiter(first, records, b"".join(line(first + n, e) for n, e in enumerate(encoded)))
            me.lock.acquire()
            self._waiting.append(me)
            if not self._syncing:
                self._syncing = me.lead = True
        if not me.lead:
            me.lock.acquire()  # woken once: our line is on disk (or failed), or we lead the next sync
        if me.lead:
            self._lead()
        if me.error is not None:
            raise me.error
        return list(range(me.first, me.first + len(records)))

    def _lead(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        error: BaseException | None = None
        current = self._files[-1]  # (only the leader writes or adds files)
        try:
            if current.size >= self.max_bytes or current.failed:
                with self._lock:
                    spare = self._spares.pop(0) if self._spares else None
                current = spare or self._new_file()
                with self._lock:
                    self._files.append(current)
            data = b"".join(w.lines for w in batch)
            size = len(data)
            _write_at(current.fd, data, HEADER_BYTES + current.size)
            os.fdatasync(current.fd)
            self.syncs += 1
        except BaseException as exc:  # every append of this sync fails; the next sync starts a new file
            error = exc
            current.failed = True
        with self._lock:
            if error is None:  # (a batch's sequence numbers follow the last one's: in order)
                current.size += size
                current.last_seq = batch[-1].first + len(batch[-1].records) - 1
                for w in batch:
                    self._untaken.extend(enumerate(w.records, w.first))
                if len(self._untaken) >= self.wake_at:
                    self._ready.notify_all()
            nxt = self._waiting[0] if self._waiting else None
            if nxt is not None:
                nxt.lead = True
            else:
                self._syncing = False
                self._ready.notify_all()  # (``close`` waits for the last sync)
        for w in batch:
            w.error = error
            if not w.lead:
                w.lock.release()
        if nxt is not None:
            nxt.lock.release()

    def wait(self, timeout: float) -> None:
        """Return once ``wake_at`` records wait to be taken, or after ``timeout`` seconds
        (or when ``kick`` is called)."""
        with self._lock:
            if len(self._untaken) < self.wake_at:
                self._ready.wait(timeout)

    def kick(self) -> None:
        """Wake ``wait`` now."""
        with self._lock:
            self._ready.notify_all()

    def take(self, limit: int | None = None) -> list[tuple[int, dict]]:
        """The records on disk not handed out before, oldest first (at most ``limit``)."""
        with self._lock:
            n = len(self._untaken) if limit is None else limit
            out, self._untaken = self._untaken[:n], self._untaken[n:]
            return out

    def moved(self, upto: int) -> None:
        """Every record up to sequence number ``upto`` is in the store, synced (the mover takes
        and moves them in order): the files that hold no later one are kept for reuse
        (``SPARES`` of them) or deleted, and the current one is rewound when it holds no
        later one and no append is under way."""
        with self._lock:
            if self._closed:  # (its files are closed, or left for another process to move)
                return
            self._moved = max(self._moved, upto)
            done = [f for f in self._files[:-1] if f.last_seq <= upto]
            self._files = [f for f in self._files if f not in done]
            current = self._files[-1]
            if current.size and current.last_seq <= upto and not current.failed \
                    and not (self._waiting or self._syncing):  # (under the lock: no append starts meanwhile)
                try:
                    self._rewind(current)
                except OSError:  # (its end is unknown now: the next sync starts a new file)
                    current.failed = True
            room = SPARES - len(self._spares)
        kept, gone = [], []
        for f in done:  # (out of the leader's reach: no longer listed)
            if f.failed or len(kept) >= room:
                gone.append(f)
                continue
            try:
                self._rewind(f)
                kept.append(f)
            except OSError:
                gone.append(f)
        with self._lock:
            if not self._closed:  # (closed meanwhile: nothing to keep them for)
                self._spares, kept = self._spares + kept, []
        self._delete(gone + kept)

    def close(self) -> None:
        """Refuse appends from now on, wait for the sync under way, then close the files and
        delete those that hold nothing left to move; the others are released: another process
        takes them as orphans."""
        with self._lock:
            self._closed = True
            while self._syncing:
                self._ready.wait()
            files, self._files = self._files, []
            spares, self._spares = self._spares, []
        self._delete(spares + [f for f in files if f.size == 0 or f.last_seq <= self._moved])
        for f in files:
            if f.fd >= 0:
                os.close(f.fd)

    def _delete(self, files: list[_File]) -> None:
        for f in files:
            f.path.unlink()
            os.close(f.fd)
            f.fd = -1
        if files:
            sync_folder(self.folder)


def _write_at(fd: int, data: bytes, at: int) -> None:
    while data:
        n = os.pwrite(fd, data, at)
        data, at = data[n:], at + n


@dataclass
class Orphan:
    """The journal of a process that died, locked by this process until ``discard``."""
    path: Path
    records: list[tuple[int, dict]]
    _fd: int
    dropped_bytes: int = 0  # a torn last write (or damage: see ``damaged``)
    damaged: int = 0  # whole records after a bad line: report them

    def discard(self) -> None:
        """Its records are in the store: delete the file."""
        self.path.unlink()
        sync_folder(self.path.parent)
        os.close(self._fd)

    def release(self) -> None:
        """Leave it for later (or for another process)."""
        os.close(self._fd)


UNFINISHED_AFTER = 60.0  # seconds: a ``.new`` file this old was left by a process that died making it


def remove_unfinished(folder: Path) -> int:
    """Delete the ``.new`` files of processes that died between making one and renaming it
    (``AckJournal._new_file``: such a file holds no record, as nothing is appended before
    the rename). A file is taken for one only when it is older than ``UNFINISHED_AFTER`` and
    nobody holds its lock: a live process holds it from moments after making it until the
    rename. :return: how many were deleted."""
    gone = 0
    for path in Path(folder).glob("*.new"):
        try:
            if time.time() - path.stat().st_mtime < UNFINISHED_AFTER:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # renamed or deleted meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
            gone += 1
        except (BlockingIOError, FileNotFoundError):  # its process is alive, or another one deleted it
            pass
        finally:
            os.close(fd)
    return gone


def orphans(folder: Path) -> Iterator[Orphan]:
    """The journals in ``folder`` whose process died (their lock could be taken)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # another process discarded it meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive (or another one is moving it)
            os.close(fd)
            continue
        if not path.exists():  # discarded between our open and our lock
            os.close(fd)
            continue
        try:
            read = read_records(path)
        except BaseException:
            os.close(fd)
            raise
        yield Orphan(path, read.records, fd, read.dropped_bytes, read.damaged)
