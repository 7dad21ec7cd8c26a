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


def test_the_file_is_cut_back_once_everything_in_it_is_moved(tmp_path):
    j = AckJournal(tmp_path)
    for n in range(3):
        j.append({"n": n})
    taken = j.take(2)
    j.moved(taken[-1][0])  # record 3 is still to move
    assert j.path.stat().st_size > 0
    rest = j.take()
    j.moved(rest[-1][0])
    assert j.path.stat().st_size == 0
    assert j.append({"n": 3}) == 4  # numbers go on: a replayed record keeps its identity
    assert read_records(j.path).records == [(4, {"n": 3})]


def test_past_max_bytes_a_new_file_starts_and_moved_files_are_deleted(tmp_path):
    line = len(encode(1, {"n": 0}))
    j = AckJournal(tmp_path, max_bytes=2 * line)  # two records per file
    for n in range(5):
        j.append({"n": n})
    files = j.files()
    assert len(files) == 3 and [len(read_records(f).records) for f in files] == [2, 2, 1]
    assert sorted(tmp_path.glob("*.log")) == sorted(files)
    assert [seq for seq, _ in j.take()] == [1, 2, 3, 4, 5]
    j.moved(3)  # the first file only holds moved records; the second still holds record 4
    assert j.files() == files[1:] and not files[0].exists()
    j.moved(5)
    assert j.files() == files[2:] and j.path.stat().st_size == 0
    assert list(orphans(tmp_path)) == []  # a live process's files, locked


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
