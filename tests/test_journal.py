"""sophon_core.journal: a worker's journal of acknowledged messages (real files, real
processes for the lock that tells a dead worker's journal from a live one's)."""
from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from sophon_core.journal import AckJournal, Read, encode, orphans, read_records


def test_each_append_is_on_disk_when_it_returns_in_order(tmp_path):
    j = AckJournal(tmp_path)
    assert j.append({"n": 1}) == 1
    assert read_records(j.path).records == [(1, {"n": 1})]
    assert j.append({"n": 2, "text": "héllo\tthere\n"}) == 2
    assert read_records(j.path).records == [(1, {"n": 1}), (2, {"n": 2, "text": "héllo\tthere\n"})]
    assert j.take() == [(1, {"n": 1}), (2, {"n": 2, "text": "héllo\tthere\n"})]
    assert j.take() == []


def test_appends_from_many_threads_share_syncs_and_none_is_lost(tmp_path):
    j = AckJournal(tmp_path)
    got: list[int] = []
    lock = threading.Lock()

    def work(t):
        for i in range(50):
            seq = j.append({"t": t, "i": i})
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 801))
    on_disk = read_records(j.path).records
    assert [seq for seq, _ in on_disk] == list(range(1, 801))
    assert sorted((r["t"], r["i"]) for _, r in on_disk) == [(t, i) for t in range(16) for i in range(50)]
    assert j.take(10) == on_disk[:10] and j.take() == on_disk[10:]
    assert j.syncs < 800  # threads that append during a sync share the next one


def test_the_file_is_rewound_once_everything_in_it_is_moved_and_keeps_its_size(tmp_path):
    j = AckJournal(tmp_path)
    size = j.path.stat().st_size  # written whole when made: appends overwrite blocks it has
    assert size > j.max_bytes
    for n in range(3):
        j.append({"n": n})
    taken = j.take(2)
    j.moved(taken[-1][0])  # record 3 is still to move
    assert [seq for seq, _ in read_records(j.path).records] == [1, 2, 3]
    rest = j.take()
    j.moved(rest[-1][0])
    assert read_records(j.path) == Read([])  # rewound: the records left after the new header are ignored
    assert j.path.stat().st_size == size
    assert j.append({"n": 3}) == 4  # numbers go on: a replayed record keeps its identity
    assert read_records(j.path).records == [(4, {"n": 3})]
    assert j.path.stat().st_size == size


def test_past_max_bytes_appends_go_to_another_file_and_moved_files_are_reused(tmp_path, monkeypatch):
    import sophon_core.journal as journal
    from sophon_core.journal import HEADER_BYTES

    line = len(encode(1, {"n": 0}))
    j = AckJournal(tmp_path, max_bytes=2 * line)  # two records per file
    for n in range(5):
        j.append({"n": n})
    files = j.files()
    assert len(files) == 3 and [len(read_records(f).records) for f in files] == [2, 2, 1]
    assert sorted(tmp_path.glob("*.log")) == sorted(files)
    assert [seq for seq, _ in j.take()] == [1, 2, 3, 4, 5]
    j.moved(3)  # the first file only holds moved records; the second still holds record 4
    assert j.files() == files[1:]
    assert files[0].exists() and read_records(files[0]).records == []  # kept for reuse, rewound
    j.moved(5)
    assert j.files() == files[2:] and read_records(j.path).records == []  # the current one: rewound
    for n in range(5, 9):
        j.append({"n": n})
    # the current file filled up again, then the oldest spare took the appends: no new file
    assert j.files() == [files[2], files[0]] and sorted(tmp_path.glob("*.log")) == sorted(files)
    assert [[seq for seq, _ in read_records(f).records] for f in j.files()] == [[6, 7], [8, 9]]
    assert all(f.stat().st_size == HEADER_BYTES + 2 * line for f in files)  # never grown
    assert [seq for seq, _ in j.take()] == [6, 7, 8, 9]
    monkeypatch.setattr(journal, "SPARES", 1)  # (one spare kept, files[1]: the next file done is deleted)
    j.moved(9)
    assert j.files() == [files[0]] and read_records(files[0]).records == []
    assert not files[2].exists() and files[1].exists()
    assert list(orphans(tmp_path)) == []  # a live process's files, locked
    j.close()  # nothing left to move: every file deleted
    assert list(tmp_path.glob("*.log")) == []


def test_a_reused_file_is_read_up_to_what_its_earlier_rounds_left(tmp_path):
    from sophon_core.journal import header

    path = tmp_path / "1-1.log"
    earlier = b"".join(encode(n, {"old": n}) for n in range(1, 6))
    new = encode(6, {"new": 6}) + encode(7, {"new": 7})
    path.write_bytes(header(5) + new + earlier[len(new):])  # rewound after record 5, then two appends
    assert read_records(path) == Read([(6, {"new": 6}), (7, {"new": 7})])  # the rest: older rounds, silently
    path.write_bytes(header(5) + earlier)  # rewound, nothing appended since
    assert read_records(path) == Read([])
    path.write_bytes(header(5) + new[:-9] + earlier[len(new) - 9:])  # the second append torn
    assert read_records(path) == Read([(6, {"new": 6})])
    bad = encode(7, {"new": 7}).replace(b'"new"', b'"xyz"')
    path.write_bytes(header(5) + encode(6, {"new": 6}) + bad + encode(8, {"new": 8}) + earlier)
    got = read_records(path)
    assert got.records == [(6, {"new": 6})] and got.damaged == 1  # a record of this round after a bad line
    path.write_bytes(header(0) + new + bytes(4096))  # a new file's zeros after its records
    assert read_records(path) == Read([(6, {"new": 6}), (7, {"new": 7})])


def test_reading_stops_at_a_torn_write_and_counts_whole_records_after_damage(tmp_path):
    path = tmp_path / "1-1.log"
    whole = encode(1, {"a": 1}) + encode(2, {"b": 2})
    path.write_bytes(whole)
    assert read_records(path) == Read([(1, {"a": 1}), (2, {"b": 2})])
    three = encode(3, {"c": 3})
    torn = three + encode(4, {"d": 4})  # one sync's write, cut short: its whole lines are read (a message
    for cut, records in ((len(torn) - 1, 3), (len(torn) - 7, 3), (5, 2)):  # not acknowledged yet: harmless)
        path.write_bytes(whole + torn[:cut])
        got = read_records(path)
        assert [seq for seq, _ in got.records] == list(range(1, records + 1)), cut
        assert got.dropped_bytes == (cut - len(three) if records == 3 else cut) and got.damaged == 0, cut
    bad = encode(2, {"b": 2}).replace(b'"b"', b'"x"')  # same length, wrong checksum
    path.write_bytes(encode(1, {"a": 1}) + bad + encode(3, {"c": 3}) + encode(4, {"d": 4}))
    got = read_records(path)
    assert got.records == [(1, {"a": 1})] and got.damaged == 2  # whole records after the bad line


def _journal_then(folder, appended, die: bool, done) -> None:
    j = AckJournal(folder)
    for n in range(appended):
        j.append({"n": n})
    done.set()
    if die:
        os._exit(0)  # a worker killed: nothing cleaned up
    threading.Event().wait(30)  # a live worker (terminated by the test)


def test_only_the_journals_of_dead_processes_are_orphans(tmp_path):
    ctx = multiprocessing.get_context("fork")
    dead_done, live_done = ctx.Event(), ctx.Event()
    dead = ctx.Process(target=_journal_then, args=(tmp_path, 3, True, dead_done))
    live = ctx.Process(target=_journal_then, args=(tmp_path, 2, False, live_done))
    dead.start()
    live.start()
    try:
        assert dead_done.wait(20) and live_done.wait(20)
        dead.join(20)
        found = list(orphans(tmp_path))
        assert [o.path.name.split("-")[0] for o in found] == [str(dead.pid)]
        (orphan,) = found
        assert orphan.records == [(1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2})]
        assert list(orphans(tmp_path)) == []  # locked by us while we move it
        orphan.discard()
        assert not orphan.path.exists()
        assert len(list(tmp_path.glob("*.log"))) == 1  # the live worker's
    finally:
        live.terminate()
        live.join(20)
    (left,) = list(orphans(tmp_path))  # its process is gone now
    assert left.records == [(1, {"n": 0}), (2, {"n": 1})]
    left.release()


def test_after_a_failed_sync_the_file_gets_nothing_more_and_appends_go_to_a_new_one(tmp_path, monkeypatch):
    import sophon_core.journal as journal

    j = AckJournal(tmp_path)
    j.append({"n": 0})
    real = os.fdatasync

    def failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal.os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output error"):
        j.append({"n": 1})
    first = j.path
    monkeypatch.setattr(journal.os, "fdatasync", real)
    assert j.append({"n": 2}) == 3  # the disk works again: a new file (the old one's end is not known to be good)
    assert j.path != first and j.files() == [first, j.path]
    assert j.take() == [(1, {"n": 0}), (3, {"n": 2})]  # only what was acknowledged goes to the store
    assert [seq for seq, _ in read_records(first).records] == [1, 2]  # (record 2 was written, never acknowledged)
    assert [seq for seq, _ in read_records(j.path).records] == [3]
    j.moved(3)
    assert j.files() == [j.path] and not first.exists()


def test_a_new_file_left_unfinished_by_a_dead_process_is_removed_and_a_live_ones_is_not(tmp_path):
    import fcntl

    from sophon_core.journal import UNFINISHED_AFTER, remove_unfinished

    old = UNFINISHED_AFTER + 5
    dead, making, fresh = (tmp_path / f"{n}-1.new" for n in ("dead", "making", "fresh"))
    for path in (dead, making, fresh):
        path.write_bytes(b"")
    for path in (dead, making):
        os.utime(path, (os.path.getmtime(path) - old,) * 2)
    held = os.open(making, os.O_RDONLY)  # a live process that is still making it holds its lock
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        assert remove_unfinished(tmp_path) == 1
        assert not dead.exists() and making.exists() and fresh.exists()
    finally:
        os.close(held)
