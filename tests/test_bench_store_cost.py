"""bench/store_cost.py, the store's group commit measured in one process: correctness only,
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
    result = store_cost.main(["--threads", "1,4", "--messages", "40", "--prefill", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["expected"] == 8 + 40 + 40
    assert result["stored"] == result["distinct"] == result["jobs"] == result["expected"]
    alone, four = result["rows"]
    # one thread: each call is a batch of its own (one commit, one fsync)
    assert (alone["threads"], alone["messages"], alone["batches"], alone["batch_mean"]) == (1, 40, 40, 1.0)
    # four threads: a batch holds at most one call of each thread, so at least 10 batches
    assert four["threads"] == 4 and 10 <= four["batches"] <= 40
    assert four["batch_mean"] == pytest.approx(40 / four["batches"])
    for row in result["rows"]:
        assert row["cpu_us_per_message"] > 0 and row["messages_per_s"] > 0
    printed = capsys.readouterr().out
    assert "mean batch" in printed and f"stored {result['expected']} messages" in printed


@pytest.mark.parametrize("argv, says", [
    (["--threads", "one"], "--threads takes numbers"),
    (["--threads", "0"], "--threads must be 1 or more"),
    (["--threads", "8", "--messages", "4"], "--messages at least the largest thread count"),
    (["--cpu", "4096"], "--cpu 4096: not a CPU this process may run on"),
])
def test_bad_options_say_what_to_fix(store_cost, capsys, argv, says):
    with pytest.raises(SystemExit) as exc:
        store_cost.main(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
