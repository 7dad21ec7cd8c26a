"""``bench/run`` stopped by SIGTERM (``timeout``, a CI runner) leaves no server behind, and keeps
what it had measured."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
RUN = Path(__file__).resolve().parents[1] / "bench" / "run"


def marked(mark: str) -> list[int]:
    """Processes whose environment holds ``BENCH_STOP_MARK=mark`` (the bench's children inherit it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if f"BENCH_STOP_MARK={mark}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_sigterm_stops_every_server_the_bench_started(tmp_path):
    mark = uuid.uuid4().hex
    log = tmp_path / "bench.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(RUN), "--smoke", "--only", "ack", "--ack-servers", "FULL", "--rounds", "2",
                                 "--seconds", "3", "--out", str(tmp_path / "smoke.json")],
                                env={**os.environ, "BENCH_STOP_MARK": mark}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while log.read_bytes().count(b"sophon up with") < 2:  # round 2's server: round 1 is measured
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert len(marked(mark)) > 2, "the bench, its sandbox and a server"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while marked(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marked(mark) == [], log.read_text()[-3000:]
        assert not (tmp_path / "smoke.json").exists()
        partial = json.loads((tmp_path / "smoke.partial.json").read_text())  # what it had measured
        assert partial["ok"] is False and partial["stopped"] == "SystemExit 143"
        assert [(p["label"].split("-", 1)[1], p["rps"] > 0)  # (labels start with the server's serial)
                for p in partial["points_measured"]] == [("sophon-FULL-w1-c8-r1", True)]
    finally:
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
