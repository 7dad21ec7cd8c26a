"""bench/run's CPU split: the server under test and the load (wrk, sandbox) never share a CPU."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from sophon_bench import split_cpus  # noqa: E402


def test_split_cpus_gives_the_server_and_the_load_cpus_of_their_own():
    assert split_cpus({0}) is None
    assert split_cpus({0, 1}) == ({0}, {1})
    assert split_cpus({0, 1, 2}) == ({0, 1}, {2})
    assert split_cpus({2, 3, 5, 7}) == ({2, 3}, {5, 7})
