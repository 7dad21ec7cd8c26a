"""bench/store_cost.py, the store's group commit measured in one process or several: correctness only,
never speed (what it prints about CPU time is not asserted)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "store_cost.py"


@pytest.fixture(scope="module")
def store_cost():
    spec = importlib.util.spec_from_file_location("store_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_message_is_stored_once_and_batches_are_counted(store_cost, tmp_path, capsys):
    out = tmp_path / "cost.json"
    result = store_cost.main(["--threads", "1,4", "--messages", "40", "--prefill", "8", "--history", "0,60",
                              "--out", str(out)])
    assert json.loads(out.read_text()) == result
    # each history size on a store of its own, holding that many answered conversations first
    assert [(s["history"], s["expected"]) for s in result["stores"]] == [(0, 88), (60, 148)]
    for s in result["stores"]:
        assert s["stored"] == s["distinct"] == s["jobs"] == s["expected"], s
        assert s["bytes"] > 0
    assert [(r["history"], r["threads"]) for r in result["rows"]] == [(0, 1), (0, 4), (60, 1), (60, 4)]
    for row in result["rows"]:
        if row["threads"] == 1:  # one thread: each call is a batch of its own (one commit, one fsync)
            assert (row["messages"], row["batches"], row["batch_mean"]) == (40, 40, 1.0)
        else:  # four threads: a batch holds at most one call of each thread, so at least 10 batches
            assert 10 <= row["batches"] <= 40 and row["batch_mean"] == pytest.approx(40 / row["batches"])
        assert row["cpu_us_per_message"] > 0 and row["messages_per_s"] > 0
    printed = capsys.readouterr().out
    assert "mean batch" in printed and "history 60: stored 148 inbound messages (148 distinct) and 148 jobs" in printed


def test_two_processes_share_one_store_and_each_message_is_stored_once(store_cost, tmp_path, capsys):
    result = store_cost.main(["--threads", "1,3", "--processes", "1,2", "--messages", "30", "--prefill", "6",
                              "--out", str(tmp_path / "cost.json")])
    (st,) = result["stores"]
    assert st["stored"] == st["distinct"] == st["jobs"] == st["expected"] == 6 + 4 * 30, st
    assert [(r["processes"], r["threads"]) for r in result["rows"]] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for row in result["rows"]:
        assert row["messages"] == 30 and row["cpu_us_per_message"] > 0 and row["messages_per_s"] > 0
        assert row["reads_per_message"] is not None and row["reads_per_message"] >= 0  # (Linux: /proc/self/io)
        if row["threads"] == 1:  # one thread per process: each call a batch of its own, in either process
            assert (row["batches"], row["batch_mean"]) == (30, 1.0), row
        else:  # a batch holds at most one call of each of the 3 threads of its process
            assert 10 <= row["batches"] <= 30 and row["batch_mean"] == pytest.approx(30 / row["batches"]), row
    assert "processes" in capsys.readouterr().out.splitlines()[0]


def test_a_process_that_fails_stops_the_row_and_says_why(store_cost, monkeypatch, tmp_path):
    """One of two processes cannot open the store: the row fails at once with its error, and the
    other process, left waiting for it at the start, is stopped (no wait for a result that never comes)."""
    import os

    parent, real_store, marker = os.getpid(), store_cost.Store, tmp_path / "failed-once"

    def store_or_fail(path, synchronous):
        if os.getpid() != parent:  # in a forked process of the row: the first to get here fails
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                raise OSError("simulated: the disk is gone")
        return real_store(path, synchronous=synchronous)

    monkeypatch.setattr(store_cost, "Store", store_or_fail)
    with pytest.raises(SystemExit) as exc:
        store_cost.main(["--threads", "2", "--processes", "2", "--messages", "20", "--prefill", "0"])
    message = str(exc.value.code)
    assert message.startswith("store_cost: 2 processes x 2 threads: process "), message
    assert message.endswith(" of 2: OSError: simulated: the disk is gone"), message
    assert marker.exists()


@pytest.mark.parametrize("argv, says", [
    (["--threads", "one"], "--threads takes comma-separated numbers"),
    (["--threads", "0"], "--threads: each number must be 1 or more"),
    (["--threads", "1,8", "--messages", "4"],
     "--messages 4: give at least the largest thread count times the largest process count (8 x 1 = 8)"),
    (["--threads", "4", "--processes", "1,3", "--messages", "10"],
     "--messages 10: give at least the largest thread count times the largest process count (4 x 3 = 12)"),
    (["--processes", "0"], "--processes: each number must be 1 or more"),
    (["--prefill", "-1"], "--prefill -1: give 0 or more"),
    (["--history", "0,-5"], "--history: each number must be 0 or more"),
    (["--history", "10,10"], "--history: each size once"),
    (["--cpu", "4096"], "--cpu 4096: not a CPU this process may run on"),
])
def test_bad_options_say_what_to_fix(store_cost, capsys, argv, says):
    with pytest.raises(SystemExit) as exc:
        store_cost.main(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
