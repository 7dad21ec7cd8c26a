"""The benchmark's smoke mode (``bench/run --smoke``): correctness only, never speed.

Runs every section of the benchmark for about a second each on loopback (the
Twilio sandbox, real gunicorn processes, wrk replaying pre-signed webhooks) and
checks what must hold whatever the machine: every request was answered 200,
every acknowledged message was stored and answered exactly once, the JSON has
every section with numbers in it, and pacing never let out more than the rate.
wrk is installed by the benchmark's own code path (apt-get) when missing; if it
cannot be, the benchmark exits with a message saying so, and this test fails.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "bench" / "run"
SECTIONS = {"ack", "slow", "e2e", "pacing", "scale", "history", "rss"}


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_point(p: dict) -> None:
    where = f"{p['label']} ({p['connections']} connections)"
    assert p["ok"] is True, where
    assert p["requests"] > 0, where
    assert p["statuses"] == {"200": p["requests"]}, f"{where}: every request answered 200: {p['statuses']}"
    assert p["non_2xx"] == 0 and not any(p["socket_errors"].values()), where
    assert p["wrapped"] is False, f"{where}: a MessageSid was sent twice"
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "seconds"):
        assert number(p[key]) and p[key] > 0, (where, key, p[key])
    assert p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] * 1.01, where
    # wrk's connections, found in the workers while the point ran
    split = p["connections_per_worker"]
    assert 0 < sum(split) <= p["connections"] and len(split) == p["workers"], (where, split)
    if p["server"] == "sophon":
        # every acknowledged webhook is stored, once, and only what wrk sent
        assert p["verified"] is True, where
        assert p["inbound_acknowledged_200"] == p["requests"] <= p["inbound_stored"] <= p["sent"], where
        assert p["stored_twice"] == 0 and p["stored_never_sent"] == 0, where
        if p["agent"] == "default":  # drained: every stored message answered exactly once
            assert p["replies_accepted"] == p["inbound_stored"], where
            assert p["unanswered"] == p["answered_twice"] == p["replies_to_unknown_messages"] == 0, where


def test_bench_smoke_is_correct(tmp_path):
    out = tmp_path / "smoke.json"
    venv = Path(sys.prefix)
    if (venv / ".installed").exists():  # the venv ./dev made: go through bench/run itself
        cmd = [str(RUN), "--smoke", "--out", str(out)]
    else:
        cmd = [sys.executable, str(REPO / "bench" / "sophon_bench.py"), "--smoke", "--out", str(out)]
    run = subprocess.run(cmd, env={**os.environ, "SOPHON_VENV": str(venv)}, check=False, capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert run.returncode == 0, f"bench/run --smoke failed ({run.returncode}):\n{run.stdout[-4000:]}\n" \
                                f"{run.stderr[-6000:]}"
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke"
    assert data["ok"] is True and data["flags"] == [], data["flags"]
    assert set(data["sections"]) == SECTIONS
    for name, section in data["sections"].items():
        assert section["ok"] is True, name
    s = data["sections"]
    assert data["settings"]["access_log"] == "off for every server"
    # CPU pinning (on by default with 2 CPUs or more): every thread of every server under
    # test, reference apps included, on the servers' CPUs; the sandbox and wrk on the others
    pin = data["settings"]["pinning"]
    if len(os.sched_getaffinity(0)) >= 2:
        server, load = set(pin["server_cpus"]), set(pin["load_cpus"])
        assert server and load and not server & load, pin
        seen = pin["servers_seen_on"]
        assert len(seen) >= 8 and any("floor" in k for k in seen) and any("quickstart" in k for k in seen), seen
        for label, lists in seen.items():
            assert lists == [",".join(map(str, sorted(server)))], (label, lists)
        assert pin["load_seen_on"] == [",".join(map(str, sorted(load)))], pin
    else:
        assert pin.startswith("off"), pin

    # Sophon runs as `sophon serve`: gunicorn plus the reply sender, both measured
    assert data["settings"]["sophon_replies"] == "sender"
    sophon_rss = [r for r in s["rss"]["samples"] if r["kind"] == "sophon"]
    assert sophon_rss and all(number(r.get("sender_vmhwm_mb")) and r["sender_vmhwm_mb"] > 0 for r in sophon_rss)

    # 1. ack: all four servers, every point correct, ratios are numbers
    ack = s["ack"]
    assert {(p["server"], p.get("sync")) for p in ack["points"]} == {
        ("floor", None), ("quickstart", None), ("sophon", "FULL"), ("sophon", "NORMAL")}
    for p in ack["points"]:
        check_point(p)
        # who used the servers' CPU during the point: the workers always, the reply sender only for Sophon
        assert p["cpu"]["workers"] > 0, p
        assert p["cpu"]["sender"] >= 0 if p["server"] == "sophon" else p["cpu"]["sender"] == 0, p
        if len(os.sched_getaffinity(0)) >= 2:
            assert 0 < p["cpu"]["server_cpus_busy"] <= 1, p
    assert data["settings"]["sophon_env"]["SOPHON_SENDER_NICE"] == os.environ.get("SOPHON_SENDER_NICE",
                                                                                  "19 (default)")
    for row in ack["ratios"]:
        for key in ("FULL_vs_quickstart_rps", "FULL_vs_floor_rps", "NORMAL_vs_quickstart_rps", "NORMAL_vs_floor_rps"):
            assert number(row[key]) and row[key] > 0, key

    # 2. slow agent: acks answered while the agent works; its replies come after its time
    slow = s["slow"]
    assert [p["agent"] for p in slow["points"]] == ["default", "slow20"]
    for p in slow["points"]:
        check_point(p)
    assert number(slow["p99_ratio_slow_vs_default"]) and slow["p99_ratio_slow_vs_default"] > 0
    assert slow["slow_agent_calls_in_flight_at_end"] > 0
    assert slow["slow_reply_delay_s"] >= slow["agent_seconds"]
    assert slow["max_ms_slow"] < 15000

    # 3. end to end: every acknowledged message stored and answered exactly once
    e2e = s["e2e"]
    check_point(e2e["point"])
    assert e2e["inbound_stored"] == e2e["replies_accepted"] > 0
    assert e2e["unanswered"] == e2e["answered_twice"] == e2e["replies_to_unknown_messages"] == 0
    assert number(e2e["e2e_msgs_per_s"]) and e2e["e2e_msgs_per_s"] > 0

    # 3b. pacing: never more than rate x window + 1 in the window, and a backlog was left waiting
    for key, numbers in (("one_number", 1), ("three_numbers", 3)):
        pacing = s["pacing"][key]
        assert pacing["numbers"] == numbers == len(pacing["per_number"])
        assert pacing["webhook_statuses"] == {"200": pacing["backlog_per_number"] * numbers}
        assert pacing["jobs_left_at_end"] > 0  # the pacer, not the supply of messages, set the pace
        window, rate = pacing["window_s"], pacing["rate_limit_per_number"]
        for n in pacing["per_number"]:
            assert 1 <= n["sent_in_window"] <= n["segments_in_window"] <= window * rate + 1, n
            assert number(n["rate_per_s"])

    # 4. workers and store history
    assert [p["workers"] for p in s["scale"]["points"]] == [1, 2]
    for p in s["scale"]["points"]:
        check_point(p)
    history = s["history"]
    for name in ("empty", "prefilled"):
        check_point(history[name]["point"])
        assert history[name]["store_bytes_at_end"] > 0
    assert history["prefilled"]["prefill"]["prefill_inbound"] == history["stored_inbound_messages"] > 0
    assert history["prefilled"]["store_bytes_at_end"] > history["empty"]["store_bytes_at_end"]
    assert number(history["rps_ratio_prefilled_vs_empty"])

    # 5. peak RSS of every worker of every run
    samples = s["rss"]["samples"]
    assert {r["kind"] for r in samples} == {"floor", "quickstart", "sophon"}
    for r in samples:
        assert len(r["worker_vmhwm_mb"]) == r["workers"] and all(number(v) and v > 0 for v in r["worker_vmhwm_mb"])

    # the table was printed
    assert "1. Webhook acknowledgement" in run.stdout and str(out) in run.stdout


def test_bench_rounds_interleave_the_servers_and_compare_medians(tmp_path):
    """``--rounds 2``: every server twice, back to back, the second round in reverse order (a
    drifting machine favours no side), and the ratio is that of the two medians, inside the
    range of the per-round ratios, whose median is reported too. ``--ack-prefill``: each Sophon
    store starts with that history."""
    import statistics

    out = tmp_path / "rounds.json"
    venv = Path(sys.prefix)
    args = ["--smoke", "--only", "ack,slow,history", "--rounds", "2", "--ack-servers", "quickstart,FULL",
            "--ack-variant", "SOPHON_SENDER_NICE=idle", "--ack-prefill", "300", "--out", str(out)]
    cmd = ([str(RUN), *args] if (venv / ".installed").exists()
           else [sys.executable, str(REPO / "bench" / "sophon_bench.py"), *args])
    run = subprocess.run(cmd, env={**os.environ, "SOPHON_VENV": str(venv)}, check=False, capture_output=True,
                         text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    data = json.loads(out.read_text())
    ack = data["sections"]["ack"]
    assert data["settings"]["ack_rounds"] == ack["rounds"] == 2
    order = [(p["server"], p.get("variant"), p["round"]) for p in ack["points"]]
    variant = "FULL sender_nice=idle"
    assert order == [("quickstart", None, 1), ("sophon", None, 1), ("sophon", variant, 1),
                     ("sophon", variant, 2), ("sophon", None, 2), ("quickstart", None, 2)], order
    for p in ack["points"]:
        check_point(p)
    # --ack-prefill: every Sophon point's store began with that history (its checks skip it)
    assert ack["prefill"] == 300
    assert {p["prefill_inbound"] for p in ack["points"] if p["server"] == "sophon"} == {300}
    # the variant's environment reached its server: its reply sender ran under SCHED_IDLE, the default one at +19
    assert {p["sender_priority"] for p in ack["points"] if p["server"] == "sophon" and not p["variant"]} == {
        "nice +19"}
    assert {p["sender_priority"] for p in ack["points"] if p.get("variant")} == {"SCHED_IDLE"}
    by = {v: [p["rps"] for p in ack["points"] if p["server"] == "sophon" and p["variant"] == v] for v in (None, variant)}
    (row,) = ack["ratios"]
    assert row[f"{variant}_vs_FULL_rps"] == pytest.approx(statistics.median(by[variant]) / statistics.median(by[None]),
                                                          abs=0.001)
    assert "Sophon FULL sender_nice=idle" in run.stdout
    rps = {server: [p["rps"] for p in ack["points"] if p["server"] == server and not p.get("variant")]
           for server in ("quickstart", "sophon")}
    expected = statistics.median(rps["sophon"]) / statistics.median(rps["quickstart"])
    assert row["FULL_vs_quickstart_rps"] == pytest.approx(expected, abs=0.001)
    low, high = row["FULL_vs_quickstart_rps_range"]
    per_round = sorted(s / q for s, q in zip(rps["sophon"], rps["quickstart"]))
    assert (low, high) == (pytest.approx(per_round[0], abs=0.001), pytest.approx(per_round[-1], abs=0.001))
    assert low - 0.001 <= row["FULL_vs_quickstart_rps"] <= high + 0.001
    assert row["FULL_vs_quickstart_rps_per_round_median"] == pytest.approx(statistics.median(per_round), abs=0.001)
    assert row["FULL_vs_floor_rps"] is None  # the floor was left out
    assert "medians of 2 rounds" in run.stdout
    # slow: the default agent, then the slow one, each round; the p99 ratio of the medians
    slow = data["sections"]["slow"]
    assert slow["rounds"] == 2
    assert [(p["agent"], p["round"]) for p in slow["points"]] == [("default", 1), ("slow20", 1),
                                                                   ("default", 2), ("slow20", 2)]
    for p in slow["points"]:
        check_point(p)
    p99 = {a: [p["p99_ms"] for p in slow["points"] if p["agent"] == a] for a in ("default", "slow20")}
    assert slow["p99_ms_default"] == pytest.approx(statistics.median(p99["default"]))
    assert slow["p99_ratio_slow_vs_default"] == pytest.approx(
        statistics.median(p99["slow20"]) / statistics.median(p99["default"]), abs=0.001)
    assert slow["p99_ratio_per_round"] == [pytest.approx(s / d, abs=0.001) for d, s in zip(p99["default"], p99["slow20"])]
    assert slow["slow_agent_calls_in_flight_at_end"] > 0
    assert "p99 slow/default per round" in run.stdout
    # history: an empty store, then a prefilled one, each round; the ratio of the medians
    history = data["sections"]["history"]
    runs = history["all_rounds"]
    assert [r["round"] for r in runs["empty"]] == [r["round"] for r in runs["prefilled"]] == [1, 2]
    for name in ("empty", "prefilled"):
        for r in runs[name]:
            check_point(r["point"])
            assert r["point"]["disk"] is None or r["point"]["disk"]["writes"] >= 0
        assert history["medians"][name]["rps"] == pytest.approx(statistics.median(r["point"]["rps"] for r in runs[name]))
    assert all(r["prefill"]["prefill_webhook_keys"] > 0 for r in runs["prefilled"])
    assert history["rps_ratio_prefilled_vs_empty"] == pytest.approx(
        history["medians"]["prefilled"]["rps"] / history["medians"]["empty"]["rps"], abs=0.001)
    low, high = history["rps_ratio_range"]
    assert low - 0.001 <= history["rps_ratio_prefilled_vs_empty"] <= high + 0.001



def test_bench_sids_are_twilio_shaped_unique_and_scattered(tmp_path):
    """Like Twilio's, the bench's MessageSids are SM + 32 hex and consecutive requests do not get
    neighbouring keys (which would make the store's unique index unrealistically cheap)."""
    import re

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from signing import Signer
    finally:
        sys.path.remove(str(REPO / "bench"))
    signer = Signer("AC" + "0" * 32, "secret-token", "http://127.0.0.1:9/api/channels/sms/webhook")
    sids = signer.write(tmp_path / "requests.txt", 2000, ["+15005550006"])
    assert all(re.fullmatch(r"SM[0-9a-f]{32}", sid) for sid in sids)
    assert len(set(sids)) == len(sids)
    ascending = sum(a < b for a, b in zip(sids, sids[1:]))
    assert 0.4 < ascending / (len(sids) - 1) < 0.6  # consecutive sids would all ascend
