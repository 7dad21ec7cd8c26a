"""The cross-process write lock (``Store._locked``): an ``flock`` on ``<db>-writelock`` around
each write transaction, so a waiting worker gets the lock as soon as it is free instead of
sleeping in SQLite's busy handler. Correct across fork, several Store objects and a killed
holder. Real files and processes; no timing is asserted (only what happens first)."""
from __future__ import annotations

import fcntl
import os
import select
import signal
import threading

import pytest

from sophon_core.models import InboundMessage
from sophon_core.store import Store


def msg(mid):
    return InboundMessage("c1", mid, "+1555", "+1000", "hi")


def taken_elsewhere(path) -> bool:
    """Whether another open file description holds the flock of ``path``."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_write_transaction_holds_the_lock_file_and_releases_it(tmp_path):
    store = Store(tmp_path / "s.db")
    lock = tmp_path / "s.db-writelock"
    seen = []
    with store._write() as db:
        db.execute("INSERT INTO pacing VALUES ('a', 1)")
        seen.append(taken_elsewhere(lock))
    store.accept_inbound(msg("m1"), "s")
    assert seen == [True]
    assert not taken_elsewhere(lock)


def test_two_store_objects_of_one_process_exclude_each_other(tmp_path):
    one, two = Store(tmp_path / "s.db"), Store(tmp_path / "s.db")
    entered = threading.Event()

    def write():
        two.count("c1", failed=1)
        entered.set()

    with one._locked():
        t = threading.Thread(target=write)
        t.start()
        assert not entered.wait(0.5)  # waits for the other object's lock
    assert entered.wait(10)
    t.join(10)
    assert one.usage()[("c1", next(iter(one.usage()))[1])]["failed"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_takes_the_lock_on_its_own_file_description(tmp_path):
    """A descriptor inherited through fork shares its lock with the parent: the child must
    open its own, or it would walk into the parent's transaction's lock (gunicorn --preload)."""
    store = Store(tmp_path / "s.db")
    store.count("c1", failed=1)  # the parent opened its lock file
    go_r, go_w = os.pipe()
    in_r, in_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            os.read(go_r, 1)
            with store._locked():
                os.write(in_w, b"in")
        finally:
            os._exit(0)
    try:
        with store._locked():
            os.write(go_w, b"g")
            ready, _, _ = select.select([in_r], [], [], 0.5)
            assert not ready, "the forked worker took the lock while the parent held it"
        ready, _, _ = select.select([in_r], [], [], 10)
        assert ready and os.read(in_r, 2) == b"in"
    finally:
        os.kill(pid, signal.SIGKILL)  # (gone already when all went well)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_killed_holder_leaves_neither_lock_taken(tmp_path):
    store = Store(tmp_path / "s.db")
    pid = os.fork()
    if pid == 0:  # dies inside a write transaction, holding both the flock and SQLite's lock
        try:
            other = Store(tmp_path / "s.db")
            with other._write() as db:
                db.execute("INSERT INTO pacing VALUES ('dead', 1)")
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not taken_elsewhere(tmp_path / "s.db-writelock")
    assert store.accept_inbound(msg("m1"), "s")[0] == "queued"
    assert store._conn().execute("SELECT COUNT(*) FROM pacing").fetchone()[0] == 0  # rolled back
