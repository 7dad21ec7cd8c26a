"""Sophon's webhook and pipeline benchmark (run it through ``bench/run``).

Everything runs on loopback: the local Twilio sandbox (in this process), the
servers under test (real gunicorn processes, one at a time, all on the same port
so one set of pre-signed requests fits all of them), and the load generator
``wrk`` (a separate process) replaying pre-signed Twilio webhooks.

Sections (``--only`` picks some):

- ``ack``: requests/s and latency of ``POST /api/channels/sms/webhook`` for Sophon
  (``SOPHON_SQLITE_SYNC`` FULL and NORMAL) and two reference apps served the same
  way: ``floor`` (bare Falcon, signature check, empty TwiML) and ``quickstart``
  (Twilio's Flask quick-start with the signature check and a ``MessagingResponse``);
- ``slow``: ack latency with an agent that takes 20 s per reply vs the default agent
  (``--rounds`` repeats it, interleaved);
- ``e2e``: messages/s from inbound webhook to the reply accepted by the sandbox;
- ``pacing``: the send rate at ``limits.sendRate`` 1 segment/s, one number then three;
- ``scale``: requests/s at 1, 2 and 4 workers;
- ``history``: ack figures and store size with 100k stored messages vs an empty store
  (``--rounds`` repeats it, interleaved, as for ``ack``);
- ``rss``: peak RSS (VmHWM) of every gunicorn worker at the end of each run.

Every server gets identical gunicorn settings: ``sophon_core.server.gunicorn_argv``
(gthread, same workers and threads, Sophon's ``--config``) with only the app
changed, and without ``--access-logfile -`` for all of them (no access log).

CPU pinning (``--pin``, the default on a machine with 2 CPUs or more): wrk and the
sandbox stand in for other machines (Twilio's webhook senders and its REST API), so
they run on CPUs of their own and every server under test, reference apps included,
on the others (``split_cpus``); ``--no-pin`` shares every CPU among all of them.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import http.client
import itertools
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import signing
import tools
try:
    from sophon_core.server import DEFAULT_THREADS
except ImportError:  # a Sophon from before it was set (A/B runs of an older checkout through PYTHONPATH)
    DEFAULT_THREADS = 4
try:
    from sophon_core.sender import DEFAULT_NICE
except ImportError:  # a Sophon from before the reply sender (as above)
    DEFAULT_NICE = "?"

PATH = "/api/channels/sms/webhook"
LUA = BENCH / "twilio_webhooks.lua"
APPS = BENCH / "apps"
SLOW_DIST = BENCH / "slow_agent_dist"
SECTIONS = ("ack", "slow", "e2e", "pacing", "scale", "history", "rss")
ACK_SERVERS = ("floor", "quickstart", "FULL", "NORMAL")  # FULL, NORMAL: Sophon's SOPHON_SQLITE_SYNC
MAIN_NUMBER = "+15005550006"
PACED_NUMBERS = ("+15005550101", "+15005550102", "+15005550103")
APP_SPECS = {"floor": "floor_app:create_app()", "quickstart": "quickstart_app:create_app()"}
SOPHON_PLUGINS = "sms_twilio,default_agent,bench_slow_agent"
OPEN_LIMITS = {"inboundPerSenderPerHour": 1_000_000, "dailyOutboundUnits": 100_000_000}
PACING_OFF = 100_000  # limits.sendRate that never makes anyone wait
# requests/s per worker the request files are sized for (more than any server here reaches;
# if one ever does, the wrk script reports the wrap-around and the point is flagged). The floor
# passed 2,900 on a fast spell of the 2-core machine (smoke run, 8 connections): twice that.
CAP_RPS = {"floor": 6000, "quickstart": 4000, "sophon": 4000}


@dataclass(frozen=True)
class Profile:
    name: str
    seconds: float  # per wrk point
    warmup: float
    ack_workers: tuple[int, ...]
    ack_connections: tuple[int, ...]
    slow_connections: int
    slow_agent_seconds: float
    e2e_connections: int
    pacing_window: float
    scale_workers: tuple[int, ...]
    scale_connections: int
    history_messages: int
    history_connections: int
    drain_timeout: float


PROFILES = {
    "full": Profile("full", seconds=10, warmup=2, ack_workers=(1, 2), ack_connections=(16, 64),
                    slow_connections=16, slow_agent_seconds=20, e2e_connections=16, pacing_window=60,
                    scale_workers=(1, 2, 4), scale_connections=64, history_messages=100_000,
                    history_connections=16, drain_timeout=180),
    "quick": Profile("quick", seconds=4, warmup=1, ack_workers=(1, 2), ack_connections=(16, 64),
                     slow_connections=16, slow_agent_seconds=20, e2e_connections=16, pacing_window=20,
                     scale_workers=(1, 2, 4), scale_connections=64, history_messages=100_000,
                     history_connections=16, drain_timeout=120),
    "smoke": Profile("smoke", seconds=1, warmup=0, ack_workers=(1,), ack_connections=(8,),
                     slow_connections=8, slow_agent_seconds=2, e2e_connections=8, pacing_window=3,
                     scale_workers=(1, 2), scale_connections=8, history_messages=2_000,
                     history_connections=8, drain_timeout=60),
}


def split_cpus(cpus: set[int]) -> tuple[set[int], set[int]] | None:
    """The CPUs of the server under test and those of the load (wrk and the sandbox): the
    first half (rounded up) for the server, the rest for the load; None with fewer than 2."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        return None
    half = (len(ordered) + 1) // 2
    return set(ordered[:half]), set(ordered[half:])


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def thread_affinities(pid: int) -> set[str]:
    """``Cpus_allowed_list`` of every thread of a process (as /proc shows it)."""
    out = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    out.add(line.split(":", 1)[1].strip())
        except OSError:
            pass
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gunicorn_command(port: int, workers: int, threads: int, app: str, access_log: bool) -> list[str]:
    """Sophon's own gunicorn command line with another app (and the same access-log setting)."""
    from sophon_core.server import APP, gunicorn_argv

    argv = gunicorn_argv(f"127.0.0.1:{port}", workers, threads)
    assert argv[-1] == APP, argv
    argv = argv[:-1] + [app]
    if not access_log:
        i = argv.index("--access-logfile")
        del argv[i:i + 2]
    return argv


def sophon_serve_command(port: int, workers: int, threads: int, access_log: bool) -> list[str]:
    """``sophon serve``: gunicorn with ``gunicorn_command``'s argv (checked by
    tests/test_bench_pinning.py), and the reply sender next to it."""
    return [sys.executable, "-c", "from sophon_core.cli import main; main()", "serve", "--bind",
            f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads)] + (
        [] if access_log else ["--no-access-log"])


def peak_rss(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS of a process, in MiB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    """A process's children, from /proc."""
    return sorted(int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _ppid(e.name) == pid)


def _ppid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie holds no sockets; orphans here are reaped by PID 1 only now and then)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class Running:
    label: str
    kind: str
    url: str
    proc: subprocess.Popen
    log: Path
    workers: int
    data_dir: Path
    first_id: int = 0  # messages rows up to this id were there before the server started (a prefill)

    @property
    def db(self) -> Path:
        return self.data_dir / "sophon.db"

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (Sophon runs under ``sophon serve``: serve -> gunicorn master -> workers)."""
        master = self.master_pid()
        return children(master) if master else []

    def master_pid(self) -> int | None:
        if self.kind != "sophon":
            return self.proc.pid
        return next((p for p in children(self.proc.pid) if "gunicorn" in cmdline(p)), None)

    def sender_pid(self) -> int | None:
        """Sophon's reply sender process (``sophon serve`` starts it next to gunicorn)."""
        if self.kind != "sophon":
            return None
        return next((p for p in children(self.proc.pid) if "sophon_core.sender" in cmdline(p)), None)


@dataclass
class Point:
    """One wrk run against one server."""

    label: str
    server: str
    workers: int
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    statuses: dict[str, int]
    non_2xx: int
    socket_errors: dict[str, int]
    sent: int
    wrk_threads: int
    wrapped: bool
    ok: bool
    extra: dict = field(default_factory=dict)
    sent_sids: set[str] = field(default_factory=set, repr=False)

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("sent_sids", "extra")}
        d.update(self.extra)
        return d


class Bench:
    def __init__(self, profile: Profile, *, out: Path, only: Sequence[str], wrk: str, wrk_version: str,
                 wrk_threads: int, gunicorn_threads: int, access_log: bool, keep: bool, seconds: float | None,
                 ack_servers: Sequence[str] = ACK_SERVERS, pin: bool | None = None, replies: str = "sender",
                 rounds: int = 1, ack_variants: Sequence[tuple[str, str]] = (), ack_prefill: int = 0):
        from sophon_sms_twilio.sandbox import Sandbox

        from sophon_core.testing import free_port

        if seconds:
            profile = Profile(**{**profile.__dict__, "seconds": seconds})
        self.p = profile
        self.out = out
        self.replies = replies  # SOPHON_REPLIES for `sophon serve`
        self.logs = out.parent / f"logs-{out.stem}"  # the servers' logs of this run (emptied first)
        if self.logs.is_dir():
            for old in self.logs.glob("*.log"):
                old.unlink()
        self.only = list(only)
        self.ack_servers = tuple(ack_servers)
        # (environment variable, value): more Sophon FULL servers in the ack section, for A/B runs
        self.ack_variants = {variant_name(k, v): {k: v} for k, v in ack_variants}
        self.rounds = max(1, rounds)  # the ack and history sections' servers, this many times over, interleaved
        self.ack_prefill = ack_prefill  # answered conversations in each ack-section Sophon store before it starts
        self.wrk, self.wrk_version, self.wrk_threads = wrk, wrk_version, wrk_threads
        self.threads = gunicorn_threads
        self.access_log = access_log
        self.keep = keep
        # Pinning (module docstring): this thread's CPUs before the sandbox's threads and
        # wrk exist, so they inherit the load's CPUs; each server gets the others at its start.
        cpus = set(os.sched_getaffinity(0))
        split = split_cpus(cpus) if pin or pin is None else None
        if pin and split is None:
            log(f"bench: --pin needs 2 CPUs or more ({len(cpus)} available); running unpinned")
        self.server_cpus, self.load_cpus = split if split else (None, None)
        if self.load_cpus:
            os.sched_setaffinity(0, self.load_cpus)
            log(f"bench: servers under test pinned to CPU(s) {cpu_list(self.server_cpus)}, wrk and the "
                f"sandbox to CPU(s) {cpu_list(self.load_cpus)}")
        self.affinity_seen: dict[str, list[str]] = {}  # server label -> its threads' CPU lists
        self.tmp = Path(tempfile.mkdtemp(prefix="sophon-bench-"))
        self.port = free_port()
        self.public = f"http://127.0.0.1:{self.port}"
        self.url = self.public + PATH
        self.box = Sandbox().start()
        self.acct = self.box.add_account(type="Full")
        for number in (MAIN_NUMBER, *PACED_NUMBERS):
            self.box.add_number(self.acct.sid, number, sms_url=self.url)
        self.signer = signing.Signer(self.acct.sid, self.acct.auth_token, self.url)
        self.flags: list[str] = []
        self.goals: list[dict] = []
        self.rss: list[dict] = []
        self.sections: dict[str, dict] = {}
        self.measured: list[Point] = []  # every recorded wrk point, as it comes (a stopped run keeps these)
        self.serial = 0
        self.all_sent: set[str] = set()  # every MessageSid a wrk run may have sent
        self.log_errors: list[dict] = []
        self.boot_failures: list[dict] = []
        self.started = time.time()

    # --- plumbing --------------------------------------------------------------------

    def flag(self, message: str) -> None:
        log(f"bench: FLAG: {message}")
        self.flags.append(message)

    def goal(self, name: str, value: float, target: str, met: bool) -> None:
        self.goals.append({"goal": name, "value": value, "target": target, "met": bool(met)})
        if not met:
            log(f"bench: goal missed: {name} = {value:.3g} (target {target})")

    def channel(self, cid: str, number: str, *, agent: str = "default", send_rate: float = PACING_OFF) -> dict:
        return {"id": cid, "type": "sms", "name": f"bench {cid}", "enabled": True,
                "config": {"accountSid": self.acct.sid, "authToken": self.acct.auth_token, "phoneNumber": number},
                "routing": {"agentId": agent, "dmBehavior": "per-peer"},
                "limits": {"sendRate": send_rate, **OPEN_LIMITS}}

    def sophon_env(self, label: str, channels: list[dict], sync: str = "FULL") -> dict[str, str]:
        data = self.tmp / f"{label}-data"
        data.mkdir(parents=True, exist_ok=True)
        path = self.tmp / f"{label}-channels.json"
        path.write_text(json.dumps({"channels": channels}, indent=1))
        return {"SOPHON_CHANNELS": str(path), "SOPHON_DATA_DIR": str(data), "SOPHON_PUBLIC_URL": self.public,
                "SOPHON_TWILIO_API_URL": self.box.url, "SOPHON_LOG_LEVEL": "WARNING",
                "SOPHON_SQLITE_SYNC": sync, "SOPHON_PLUGINS": SOPHON_PLUGINS,
                "SOPHON_ADMIN_TOKEN": "bench-admin-token-0123456789abcdef",
                "SOPHON_AGENT_TIMEOUT": str(self.p.slow_agent_seconds + 40),
                "BENCH_SLOW_AGENT_SECONDS": str(self.p.slow_agent_seconds),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(SLOW_DIST), os.environ.get("PYTHONPATH")]))}

    def reference_env(self, label: str) -> dict[str, str]:
        data = self.tmp / f"{label}-data"  # gunicorn_conf puts its metrics folder there
        data.mkdir(parents=True, exist_ok=True)
        return {"BENCH_AUTH_TOKEN": self.acct.auth_token, "SOPHON_DATA_DIR": str(data),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")]))}

    @contextlib.contextmanager
    def server(self, label: str, kind: str, env: dict[str, str], workers: int, *,
               hard_stop: bool = False) -> Iterator[Running]:
        """Start gunicorn (kind: floor, quickstart or sophon), wait for /healthz and every worker.

        A server that fails to boot (gunicorn halts when a worker cannot start) is reported
        under ``boot_failures`` with its log and started again, up to three times.
        """
        self.serial += 1
        label = f"{self.serial:02d}-{label}"
        if kind == "sophon":  # what users run: gunicorn with the same argv as below, plus the reply sender
            argv = sophon_serve_command(self.port, workers, self.threads, self.access_log)
            env = {**env, "SOPHON_REPLIES": self.replies}
        else:
            argv = gunicorn_command(self.port, workers, self.threads, APP_SPECS[kind], self.access_log)
        self.logs.mkdir(parents=True, exist_ok=True)
        db = Path(env["SOPHON_DATA_DIR"]) / "sophon.db" if kind == "sophon" else None
        first_id = self.query(db, "SELECT COALESCE(MAX(id), 0) FROM messages")[0][0] if db and db.exists() else 0
        proc = None  # (stopped on the way out, however it is left: an error, Ctrl-C, SIGTERM while booting)
        try:
            for attempt in range(1, 4):
                logfile = self.logs / (f"{label}.log" if attempt == 1 else f"{label}-attempt{attempt}.log")
                out = open(logfile, "wb")  # noqa: SIM115 (closed when the server stops)
                proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=self.tmp, start_new_session=True, preexec_fn=self._pin_server)
                running = Running(label, kind, self.public, proc, logfile, workers, Path(env["SOPHON_DATA_DIR"]),
                                  first_id)
                booted = time.monotonic()
                problem = self._boot(running, workers)
                if problem is None:
                    break
                self._stop(proc, [], True)
                out.close()
                proc = None
                text = logfile.read_text(errors="replace")
                cause = next((line for line in reversed(text.splitlines()) if "Error" in line or "error" in line),
                             problem)
                self.boot_failures.append({"server": label, "attempt": attempt, "log": str(logfile),
                                           "problem": problem, "cause": cause[:300]})
                log(f"bench: {label}: failed to boot (attempt {attempt}): {problem}; {cause[:200]}")
                if attempt == 3:
                    raise RuntimeError(f"{label}: failed to boot three times; see {logfile}")
            log(f"bench: {label}: {kind} up with {workers} worker(s) in {time.monotonic() - booted:.1f} s")
            self.affinity_seen[label] = sorted(set().union(*(thread_affinities(p) for p in
                                                             [proc.pid, running.master_pid(), running.sender_pid(),
                                                              *running.worker_pids()] if p)))
            yield running
        finally:
            if proc is not None:
                stopping = time.monotonic()
                pids = running.worker_pids() if proc.poll() is None else []
                self._stop(proc, pids, hard_stop or self.p.name == "smoke")
                log(f"bench: {label}: stopped in {time.monotonic() - stopping:.1f} s")
                out.close()
                text = logfile.read_text(errors="replace")
                bad = [line for line in text.splitlines()
                       if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line)]
                if bad:
                    # the server's own ERROR lines: reported next to the figures, apart from request errors
                    self.log_errors.append({"server": label, "log": str(logfile), "error_lines": len(bad),
                                            "first": bad[0][:300]})
                    log(f"bench: {label}: {len(bad)} ERROR line(s) in the server log {logfile}: {bad[0][:200]}")

    def _pin_server(self) -> None:
        """In the server's process, before gunicorn starts (its workers inherit it)."""
        if self.server_cpus:
            os.sched_setaffinity(0, self.server_cpus)

    def _boot(self, running: Running, workers: int) -> str | None:
        """Wait until /healthz answers and ``workers`` workers run, and still do a moment later.

        :return: None when up, else what went wrong.
        """
        import urllib.request

        proc = running.proc
        deadline = time.monotonic() + 60
        settled_at = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"gunicorn exited with {proc.returncode}"
            up = False
            try:
                with urllib.request.urlopen(f"{self.public}/healthz", timeout=2) as r:
                    health = json.loads(r.read() or b"{}") if running.kind == "sophon" else {}
                    # under `sophon serve`: the reply sender too
                    up = r.status == 200 and health.get("reply_sender", "running") == "running"
            except (OSError, ValueError):
                pass
            live = [p for p in running.worker_pids() if alive(p)]
            if up and len(live) >= workers:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= 0.5:  # gunicorn halts shortly after a worker fails
                    return None
            else:
                settled_at = None
            time.sleep(0.1)
        return "no answer on /healthz with every worker running within 60 s"

    def _stop(self, proc: subprocess.Popen, pids: list[int], hard: bool) -> None:
        if proc.poll() is None:
            if hard:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.terminate()
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray workers
        deadline = time.monotonic() + 10  # the port is free once every worker is gone
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)

    def sample_rss(self, server: Running, section: str) -> dict:
        pids = server.worker_pids()
        per = [{"pid": pid, **peak_rss(pid)} for pid in pids]
        master = peak_rss(server.master_pid() or server.proc.pid)
        entry = {"section": section, "server": server.label, "kind": server.kind, "workers": server.workers,
                 "worker_vmhwm_mb": [w.get("VmHWM", 0.0) for w in per],
                 "worker_vmrss_mb": [w.get("VmRSS", 0.0) for w in per],
                 "max_worker_vmhwm_mb": max((w.get("VmHWM", 0.0) for w in per), default=0.0),
                 "master_vmhwm_mb": master.get("VmHWM", 0.0)}
        sender = server.sender_pid()
        if sender:
            entry["sender_vmhwm_mb"] = peak_rss(sender).get("VmHWM", 0.0)
        if len(per) != server.workers:
            self.flag(f"{server.label}: {len(per)} worker process(es) at the end, expected {server.workers}")
        self.rss.append(entry)
        return entry

    # --- load ------------------------------------------------------------------------

    def load(self, server: Running, seconds: float, connections: int, *, numbers: Sequence[str] = (MAIN_NUMBER,),
             record: bool = True) -> Point:
        """One wrk run of pre-signed webhooks; every MessageSid is new."""
        threads = max(1, min(self.wrk_threads, connections))
        cap = CAP_RPS["sophon" if server.kind == "sophon" else server.kind] * server.workers
        count = int(cap * seconds) + 200 * threads
        path = self.tmp / "requests.txt"
        sids = self.signer.write(path, count, numbers)
        argv = [self.wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                "--timeout", "30s",
                "--latency", "-s", str(LUA), self.url, "--", str(path), str(threads)]
        dirty_kb, disk_before = dirty_kib(), disk_counters(self.tmp)
        cpu_before, idle_before = server_cpu(server), cpu_idle(self.server_cpus)
        split: list[int] = []  # wrk's connections per worker (they stay where they landed)
        done = threading.Event()

        def look() -> None:  # at a quarter, half and three quarters of the point: the fullest look
            while not done.wait(seconds / 4):
                seen = connections_per_worker(self.port, server.worker_pids())
                if sum(seen) > sum(split) or len(seen) > len(split):
                    split[:] = seen

        looker = threading.Thread(target=look, daemon=True)
        looker.start()
        try:
            run = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=seconds + 180)
        finally:
            done.set()
            looker.join()
        disk_after = disk_counters(self.tmp)
        cpu_after, idle_after = server_cpu(server), cpu_idle(self.server_cpus)
        found = [line for line in run.stdout.splitlines() if line.startswith("BENCH_JSON ")]
        if run.returncode != 0 or not found:
            raise RuntimeError(f"wrk failed (exit {run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        data = json.loads(found[-1][len("BENCH_JSON "):])
        statuses: collections.Counter = collections.Counter()
        sent = wraps = 0
        sent_sids: set[str] = set()
        for t in data["threads"]:
            statuses.update({k: int(v) for k, v in (t.get("statuses") or {}).items()})
            sent += int(t["sent"])
            wraps += int(t["wraps"])
            mine = sids[int(t["id"]) - 1::threads]
            sent_sids.update(mine[:int(t["sent"])])
        self.all_sent.update(sent_sids)
        lat = data["latency_us"]
        errors = {k: int(v) for k, v in data["errors"].items()}
        non_2xx = sum(v for k, v in statuses.items() if not k.startswith("2"))
        socket_errors = {k: v for k, v in errors.items() if k != "status"}
        ok = non_2xx == 0 and not any(socket_errors.values()) and wraps == 0 and errors["status"] == 0
        point = Point(label=server.label, server=server.kind, workers=server.workers, connections=connections,
                      seconds=round(data["duration_us"] / 1e6, 3), requests=int(data["requests"]),
                      rps=round(data["requests"] / (data["duration_us"] / 1e6), 1),
                      p50_ms=round(lat["p50"] / 1000, 2), p90_ms=round(lat["p90"] / 1000, 2),
                      p99_ms=round(lat["p99"] / 1000, 2), max_ms=round(lat["max"] / 1000, 2),
                      mean_ms=round(lat["mean"] / 1000, 2), statuses=dict(statuses), non_2xx=non_2xx,
                      socket_errors=socket_errors, sent=sent, wrk_threads=threads, wrapped=wraps > 0, ok=ok, sent_sids=sent_sids)
        point.extra["dirty_kib_at_start"] = dirty_kb  # written data the kernel still owes the disk
        point.extra["connections_per_worker"] = split
        # CPU share (of one CPU) of the workers and of the reply sender during the point, and how busy
        # the servers' CPUs were (pinned): who took the CPU, and how much of it lay idle
        took = {k: round((cpu_after[k] - cpu_before[k]) / point.seconds, 3) if point.seconds else None
                for k in cpu_before}
        if idle_before and idle_after and idle_after[0] > idle_before[0]:
            took["server_cpus_busy"] = round(1 - (idle_after[1] - idle_before[1]) / (idle_after[0] - idle_before[0]),
                                             3)
        point.extra["cpu"] = took
        if disk_before and disk_after and point.requests:  # the stores' disk, during the point
            d = {k: disk_after[k] - disk_before[k] for k in disk_before}
            point.extra["disk"] = {**d, "write_kib_per_request": round(d["write_kib"] / point.requests, 1),
                                   "ms_per_flush": round(d["flush_ms"] / d["flushes"], 2) if d["flushes"] else None}
        what = f"{server.label} {connections} connections"
        if record:
            self.measured.append(point)
            share = (f", CPU: workers {took['workers']:.2f}" + (f", sender {took['sender']:.2f}"
                                                                if server.kind == "sophon" else "")
                     + (f", server CPUs {100 * took['server_cpus_busy']:.0f}% busy" if "server_cpus_busy" in took
                        else "") if took["workers"] is not None else "")
            log(f"bench: {what}: {point.rps:.0f} req/s, p50 {point.p50_ms} ms, p99 {point.p99_ms} ms, "
                f"max {point.max_ms} ms, statuses {dict(statuses)}{share}"
                + (f", connections per worker {'/'.join(map(str, split))}" if server.workers > 1 else ""))
        if wraps:
            self.flag(f"{what}: wrk ran out of pre-signed requests and repeated MessageSids ({wraps} wrap(s))")
        if non_2xx or errors["status"]:
            self.flag(f"{what}: {non_2xx} non-2xx answer(s): {dict(statuses)}")
        if any(socket_errors.values()):
            self.flag(f"{what}: socket errors {socket_errors}")
        if point.requests == 0:
            self.flag(f"{what}: no request was answered")
            point.ok = False
        return point

    def post_all(self, requests: Sequence[tuple[str, str, str]], connections: int = 8) -> collections.Counter:
        """POST exact requests (signature, token, body) from this process; count the statuses."""
        statuses: collections.Counter = collections.Counter()
        lock = threading.Lock()
        items = iter(requests)

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            for sig, token, body in items:
                conn.request("POST", PATH, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                  "X-Twilio-Signature": sig, "I-Twilio-Idempotency-Token": token})
                resp = conn.getresponse()
                resp.read()
                with lock:
                    statuses[str(resp.status)] += 1
            conn.close()

        workers = [threading.Thread(target=client) for _ in range(connections)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return statuses

    # --- looking at the results ------------------------------------------------------

    def outbound(self, start: int = 0) -> list[dict]:
        """Messages the sandbox's REST API accepted since index ``start`` (cheap: no deep copies)."""
        with self.box._lock:
            return [{"at": m["received_at"], "from": m["form"].get("From"), "to": m["form"].get("To"),
                     "body": m["form"].get("Body", ""), "segments": int(m["response"].get("num_segments") or 1)}
                    for m in self.box._messages[start:]]

    def outbound_count(self) -> int:
        with self.box._lock:
            return len(self.box._messages)

    @staticmethod
    def query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def open_jobs(self, server: Running) -> int:
        return self.query(server.db, "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")[0][0]

    def stored_of(self, server: Running, point: Point) -> int:
        rows = self.query(server.db, "SELECT provider_id FROM messages WHERE id > ? AND direction = 'in'",
                          (server.first_id,))
        return sum(1 for (sid,) in rows if sid in point.sent_sids)

    def drain(self, server: Running, point: Point | None = None, timeout: float | None = None) -> float:
        """Wait until the server stored what wrk left in flight, then until every job is done
        (the replies went out); return how long that took.

        Every request wrk's script handed out was written to the socket but one (wrk calls the
        first thread's ``request()`` once to check it), and gunicorn still reads and stores
        those after wrk hung up, however slowly.
        """
        limit = timeout or self.p.drain_timeout
        started = time.monotonic()
        deadline = started + limit
        if point is None:
            time.sleep(0.3)
        while True:
            if point is not None:  # (short of the expected count: nothing new for 5 s; verify_point judges)
                last = self.wait_count(server, point, deadline, reached=point.sent - 1, hold=0.5, stall=5.0)
            while self.open_jobs(server):
                if time.monotonic() > deadline:
                    self.flag(f"{server.label}: {self.open_jobs(server)} job(s) still open after {limit:g} s")
                    return time.monotonic() - started
                time.sleep(0.1)
            if point is None or self.stored_of(server, point) == last or time.monotonic() > deadline:
                return time.monotonic() - started

    def wait_count(self, server: Running, point: Point, deadline: float, *, reached: int, hold: float,
                   stall: float) -> int:
        """Poll how many of the point's messages are stored until that count reached ``reached``
        and held still ``hold`` s, or held still ``stall`` s short of it, or ``deadline``;
        :return: the count."""
        last, since = self.stored_of(server, point), time.monotonic()
        while time.monotonic() < deadline:
            still = time.monotonic() - since
            if still >= stall or (last >= reached and still >= hold):
                break
            time.sleep(0.1)
            stored = self.stored_of(server, point)
            if stored != last:
                last, since = stored, time.monotonic()
        return last

    def wait_stored(self, server: Running, point: Point, timeout: float = 10.0) -> None:
        """Wait until the store holds as many of the point's messages as were acknowledged, or
        until their count has not moved for 2 s (``verify_point`` judges)."""
        self.wait_count(server, point, time.monotonic() + timeout, reached=point.statuses.get("200", 0), hold=0,
                        stall=2.0)

    def warmup(self, server: Running, drain: bool = True) -> None:
        """A short unrecorded wrk run (errors are still flagged); then Sophon's backlog is drained."""
        if self.p.warmup > 0:
            point = self.load(server, self.p.warmup, 16, record=False)
            if server.kind == "sophon" and drain:
                self.drain(server, point)

    # --- sections --------------------------------------------------------------------

    def run(self) -> dict:
        for name in SECTIONS:
            if name in self.only and name != "rss":
                log(f"bench: == section {name} ==")
                started = time.monotonic()
                self.sections[name] = getattr(self, f"section_{name}")()
                self.sections[name]["elapsed_s"] = round(time.monotonic() - started, 1)
        if "rss" in self.only:
            self.sections["rss"] = self.section_rss()
        return self.report()

    def verify_point(self, server: Running, point: Point, outbound_start: int, *, answered: bool) -> dict:
        """Correctness of one Sophon load point, by MessageSid: every acknowledged webhook of the
        point is stored once, and nothing is stored that the benchmark never sent. With
        ``answered`` (after a drain): every message of the point got exactly one reply at the
        sandbox, no message got two, and no reply answers a message that is not stored."""
        rows = self.query(server.db, "SELECT provider_id, text, created_at FROM messages WHERE id > ?"
                                     " AND direction = 'in'", (server.first_id,))  # (not a prefill's)
        mine = [r for r in rows if r[0] in point.sent_sids]
        acked = point.statuses.get("200", 0)
        out = {"inbound_acknowledged_200": acked, "inbound_stored": len(mine),
               "stored_twice": len(mine) - len({r[0] for r in mine}),
               "stored_never_sent": sum(1 for r in rows if r[0] not in self.all_sent)}
        problems = []
        if not acked <= len(mine) <= point.sent:
            problems.append(f"{len(mine)} of its messages stored, but {acked} acknowledged and {point.sent} sent")
        if out["stored_twice"] or out["stored_never_sent"]:
            problems.append(f"{out['stored_twice']} stored twice, {out['stored_never_sent']} stored that the "
                            "benchmark never sent")
        if answered:
            replies = [m for m in self.outbound(outbound_start) if m["from"] == MAIN_NUMBER]
            texts, all_texts = {r[1] for r in mine}, {r[1] for r in rows}
            said = collections.Counter(m.group(1) for m in
                                       (re.search(r'You said: "([^"]*)"', r["body"]) for r in replies) if m)
            out.update({"replies_accepted": sum(said[t] for t in texts),
                        "unanswered": sum(1 for t in texts if said[t] == 0),
                        "answered_twice": sum(1 for n in said.values() if n > 1),
                        "replies_to_unknown_messages": sum(1 for t in said if t not in all_texts)
                        + sum(1 for r in replies if not re.search(r'You said: "', r["body"])),
                        "replies_to_earlier_messages": sum(n for t, n in said.items() if t in all_texts - texts)})
            unknown = [r["body"] for r in replies if not (m := re.search(r'You said: "([^"]*)"', r["body"]))
                       or m.group(1) not in all_texts]
            if unknown:
                out["unknown_reply_examples"] = unknown[:3]
            if out["unanswered"] or out["answered_twice"] or out["replies_to_unknown_messages"]:
                problems.append(f"{out['unanswered']} stored message(s) unanswered, {out['answered_twice']} "
                                f"answered twice, {out['replies_to_unknown_messages']} repl(y/ies) to messages "
                                f"that are not stored")
            quoted = (re.search(r'You said: "([^"]*)"', r["body"]) for r in replies)
            out["_rows"], out["_replies"] = mine, [r for r, m in zip(replies, quoted) if m and m.group(1) in texts]
        for problem in problems:
            self.flag(f"{point.label} {point.connections} connections: {problem}")
        out["verified"] = not problems
        point.ok = point.ok and not problems
        return out

    def sophon_run(self, label: str, sync: str, workers: int, connections: Sequence[int], *,
                   agent: str = "default", section: str, prefill: int = 0,
                   variant: str | None = None) -> tuple[list[Point], dict]:
        env = self.sophon_env(label, [self.channel("sms", MAIN_NUMBER, agent=agent)], sync)
        env.update(self.ack_variants.get(variant, {}))
        info: dict = {}
        if prefill:
            info.update(prefill_store(Path(env["SOPHON_DATA_DIR"]) / "sophon.db", prefill, "sms", agent,
                                      self.signer.senders))
        points = []
        with self.server(label, "sophon", env, workers, hard_stop=agent != "default") as srv:
            self.warmup(srv, drain=agent == "default")
            for c in connections:
                start = self.outbound_count()
                point = self.load(srv, self.p.seconds, c)
                point.extra.update({"sync": sync, "agent": agent, "replies": self.replies, "variant": variant,
                                    "sender_priority": scheduling(srv.sender_pid()),
                                    # replies still owed when the load stopped (the sender catches up after)
                                    "replies_during_load": self.outbound_count() - start,
                                    "open_jobs_at_end": self.open_jobs(srv)})
                if agent == "default":
                    point.extra["drain_s"] = round(self.drain(srv, point), 2)
                else:  # (acknowledged from the workers' journals, stored within 50 ms: wait for that only)
                    self.wait_stored(srv, point)
                checks = self.verify_point(srv, point, start, answered=agent == "default")
                point.extra.update({k: v for k, v in checks.items() if not k.startswith("_")})
                info["checks"] = checks
                points.append(point)
            if agent != "default":
                # (the sender may still be yielding to the load that just stopped: HOLD s at most)
                deadline = time.monotonic() + 3.0
                while True:
                    info["running_jobs"] = self.query(srv.db, "SELECT COUNT(*) FROM jobs WHERE state = 'running'")[0][0]
                    if info["running_jobs"] or time.monotonic() >= deadline:
                        break
                    time.sleep(0.1)
                if self.p.name == "smoke":  # the slow agent does answer, after its time
                    info["slow_reply_delay_s"] = self.wait_slow_reply(srv, start)
            info["rss"] = self.sample_rss(srv, section)
        info["store_bytes"] = store_bytes(srv.db, fold_log=True)  # (the server has stopped)
        return points, info

    def wait_slow_reply(self, server: Running, start: int) -> float | None:
        deadline = time.monotonic() + self.p.slow_agent_seconds + 15
        while time.monotonic() < deadline:
            replies = [m for m in self.outbound(start) if m["body"].startswith("slow agent")]
            if replies:
                text = replies[0]["body"].split(": ", 1)[1]
                row = self.query(server.db, "SELECT created_at FROM messages WHERE direction = 'in' AND text = ?",
                                 (text,))
                delay = replies[0]["at"] - row[0][0] if row else None
                if delay is None or delay < self.p.slow_agent_seconds:
                    self.flag(f"slow: a slow-agent reply came {delay} s after its message, sooner than the agent's "
                              f"{self.p.slow_agent_seconds:g} s")
                return round(delay, 2) if delay is not None else None
            time.sleep(0.1)
        self.flag("slow: no slow-agent reply reached the sandbox")
        return None

    def section_ack(self) -> dict:
        """Every server of ``--ack-servers`` at every point, ``--rounds`` times over. Every point
        gets servers of its own, started afresh (so a Sophon point never finds the store another
        point grew; ``--ack-prefill`` gives each the same history instead). The servers compared
        run back to back: per point, the references, then Sophon and its variants, in that order
        on odd rounds and the reverse on even ones, so that a machine that slowly speeds up or
        slows down (shared hosts do, by 20% within minutes) favours neither side. The ratios
        compare each point's median req/s (and p99) across the rounds; with several rounds each
        ratio also gets the median and the range of the per-round ratios."""
        points: list[Point] = []
        for r in range(1, self.rounds + 1):
            tag = f"-r{r}" if self.rounds > 1 else ""
            got: list[Point] = []
            for workers in self.p.ack_workers:
                runs = [*(kind for kind in ("floor", "quickstart", "FULL", "NORMAL") if kind in self.ack_servers),
                        *self.ack_variants]
                for c in self.p.ack_connections:
                    for kind in (runs if r % 2 else runs[::-1]):
                        if kind in ("floor", "quickstart"):
                            with self.server(f"{kind}-w{workers}-c{c}{tag}", kind,
                                             self.reference_env(f"{kind}-c{c}{tag}"), workers) as srv:
                                self.warmup(srv)
                                got.append(self.load(srv, self.p.seconds, c))
                                self.sample_rss(srv, "ack")
                        else:  # Sophon FULL or NORMAL, or a variant (of FULL)
                            variant = None if kind in ("FULL", "NORMAL") else kind
                            run, info = self.sophon_run(f"sophon-{kind.replace(' ', '-')}-w{workers}-c{c}{tag}",
                                                        "FULL" if variant else kind, workers, [c], section="ack",
                                                        variant=variant, prefill=self.ack_prefill)
                            for point in run:
                                point.extra["prefill_inbound"] = info.get("prefill_inbound", 0)
                            got.extend(run)
            for point in got:
                point.extra["round"] = r
            points.extend(got)
        by: dict[tuple, list[Point]] = collections.defaultdict(list)
        for p in points:  # a flagged point (e.g. wrk ran out of requests) counts in no ratio
            key = (p.server if p.server != "sophon" else f"sophon-{p.extra.get('variant') or p.extra['sync']}",
                   p.workers, p.connections)
            by[key].append(p if p.ok else None)
        median = {k: (statistics.median(p.rps for p in v if p), statistics.median(p.p99_ms for p in v if p))
                  for k, v in by.items() if any(v)}
        ratios = []
        for workers in self.p.ack_workers:
            for c in self.p.ack_connections:
                row: dict = {"workers": workers, "connections": c, "rounds": self.rounds}
                for sync in ("FULL", "NORMAL", *self.ack_variants):
                    s_key = (f"sophon-{sync}", workers, c)
                    for ref in ("quickstart", "floor", *(("FULL",) if sync in self.ack_variants else ())):
                        r_key = (ref if ref != "FULL" else "sophon-FULL", workers, c)  # (--ack-servers may leave some out)
                        both = s_key in median and r_key in median
                        (s_rps, s_p99), (r_rps, r_p99) = (median[s_key], median[r_key]) if both else ((0, 0), (0, 0))
                        row[f"{sync}_vs_{ref}_rps"] = round(s_rps / r_rps, 3) if both and r_rps else None
                        row[f"{sync}_vs_{ref}_p99"] = round(s_p99 / r_p99, 2) if both and r_p99 else None
                        if both and self.rounds > 1:
                            per_round = [a.rps / b.rps for a, b in zip(by[s_key], by[r_key]) if a and b and b.rps]
                            row[f"{sync}_vs_{ref}_rps_range"] = ([round(min(per_round), 3), round(max(per_round), 3)]
                                                                 if per_round else None)
                            row[f"{sync}_vs_{ref}_rps_per_round_median"] = (
                                round(statistics.median(per_round), 3) if per_round else None)
                ratios.append(row)
        return {"ok": all(p.ok for p in points), "points": [p.to_json() for p in points], "ratios": ratios,
                "rounds": self.rounds, "variants": self.ack_variants, "prefill": self.ack_prefill,
                "medians": [{"server": k[0], "workers": k[1], "connections": k[2], "rps": v[0], "p99_ms": v[1]}
                            for k, v in sorted(median.items())],
                "note": "Sophon answers every message through its pipeline (default agent, replies POSTed to the "
                        "sandbox) while it acknowledges; floor and quickstart store nothing and send nothing "
                        "after the answer. Ratios: of each point's median across the rounds."}

    def section_slow(self) -> dict:
        """The instant default agent, then one taking ``slow_agent_seconds`` per reply, ``--rounds``
        times over, interleaved; the p99 ratio is of the medians, with each round's ratio."""
        out: dict = {"agent_seconds": self.p.slow_agent_seconds, "connections": self.p.slow_connections,
                     "workers": 2, "sync": "FULL", "rounds": self.rounds}
        by: dict[str, list[Point]] = {"default": [], "slow20": []}
        in_flight = []
        for r in range(1, self.rounds + 1):
            tag = f"-r{r}" if self.rounds > 1 else ""
            for agent in ("default", "slow20"):
                start = self.outbound_count()
                got, info = self.sophon_run(f"sophon-agent-{agent}{tag}", "FULL", 2, [self.p.slow_connections],
                                            agent=agent, section="slow")
                got[0].extra["round"] = r
                by[agent].append(got[0])
                if agent == "slow20":
                    early = [m for m in self.outbound(start) if m["body"].startswith("slow agent")]
                    in_flight.append(info["running_jobs"])
                    out["slow_reply_delay_s"] = info.get("slow_reply_delay_s")
                    out["slow_replies_during_run"] = out.get("slow_replies_during_run", 0) + len(early)
                    if info["running_jobs"] == 0:
                        self.flag("slow: no job was running the slow agent at the end of its run")
                    if early and self.p.seconds + 1 < self.p.slow_agent_seconds:
                        self.flag(f"slow: {len(early)} slow-agent repl(y/ies) arrived before the agent could finish")
        ds, ss = by["default"], by["slow20"]
        d_p99, s_p99 = statistics.median(p.p99_ms for p in ds), statistics.median(p.p99_ms for p in ss)
        ratio = round(s_p99 / d_p99, 3) if d_p99 else None
        d_max, s_max = max(p.max_ms for p in ds), max(p.max_ms for p in ss)
        out.update({"ok": all(p.ok for p in ds + ss), "points": [p.to_json() for pair in zip(ds, ss) for p in pair],
                    "slow_agent_calls_in_flight_at_end": min(in_flight),
                    "p99_ms_default": d_p99, "p99_ms_slow": s_p99, "p99_ratio_slow_vs_default": ratio,
                    "p99_ratio_per_round": [round(s.p99_ms / d.p99_ms, 3) if d.p99_ms else None
                                            for d, s in zip(ds, ss)],
                    "max_ms_default": d_max, "max_ms_slow": s_max, "twilio_timeout_ms": 15000})
        if self.p.name != "smoke":
            self.goal("slow agent ack p99 / default agent ack p99" + (f" (medians of {self.rounds} rounds)"
                      if self.rounds > 1 else ""), ratio or 0, "<= 1.2", ratio is not None and ratio <= 1.2)
            self.goal("max ack latency with the slow agent (ms)", s_max,
                      "far from Twilio's 15000: at most a third of it, 5000", s_max <= 5000)
            self.goal("max ack latency with the default agent (ms)", d_max,
                      "far from Twilio's 15000: at most a third of it, 5000", d_max <= 5000)
        if max(d_max, s_max) >= 15000:
            self.flag("slow: an acknowledgement took 15 s or more (Twilio would have given up)")
        return out

    def section_e2e(self) -> dict:
        points, info = self.sophon_run("sophon-e2e", "FULL", 2, [self.p.e2e_connections], section="e2e")
        point, checks = points[0], info["checks"]
        rows, replies = checks["_rows"], checks["_replies"]
        first_in = min((r[2] for r in rows), default=0.0)
        last_in = max((r[2] for r in rows), default=0.0)
        at = sorted(r["at"] for r in replies)
        last_out = at[-1] if at else last_in
        return {
            "ok": point.ok, "workers": 2, "connections": self.p.e2e_connections, "sync": "FULL", "pacing": "off",
            "agent": "default", "point": point.to_json(),
            **{k: v for k, v in checks.items() if not k.startswith("_")},
            "inbound_window_s": round(last_in - first_in, 2),
            "replies_per_s_while_inbound": round(sum(1 for a in at if a <= last_in) / max(1e-9, last_in - first_in), 1),
            "e2e_msgs_per_s": round(len(replies) / max(1e-9, last_out - first_in), 1),
            "last_reply_after_last_inbound_s": round(last_out - last_in, 2),
            "how": "inbound: wrk for the point's seconds; e2e msg/s = replies accepted by the sandbox / (last reply "
                   "at the sandbox - first inbound acknowledged)",
        }

    def pacing_run(self, numbers: Sequence[str], rate: float) -> dict:
        window = self.p.pacing_window
        label = f"sophon-pacing-{len(numbers)}n"
        channels = [self.channel(f"sms{i + 1}", n, send_rate=rate) for i, n in enumerate(numbers)]
        env = self.sophon_env(label, channels, "FULL")
        backlog = int(window * rate) + 15  # per number: more than the pacer lets out in the window
        with self.server(label, "sophon", env, 2, hard_stop=True) as srv:
            start = self.outbound_count()
            reqs = [self.signer.sign(form) for form, _ in
                    ((self.signer.form(numbers[i % len(numbers)]), None) for i in range(backlog * len(numbers)))]
            statuses = self.post_all(reqs)
            posted = time.time()
            deadline = time.monotonic() + window + 30
            firsts: dict[str, float] = {}
            while time.monotonic() < deadline:
                msgs = self.outbound(start)
                for m in msgs:
                    firsts.setdefault(m["from"], m["at"])
                if len(firsts) == len(numbers) and time.time() > max(firsts.values()) + window + 0.5:
                    break
                time.sleep(0.2)
            msgs = self.outbound(start)
            left = self.open_jobs(srv)
            self.sample_rss(srv, "pacing")
        per = []
        for n in numbers:
            at = sorted(m["at"] for m in msgs if m["from"] == n)
            segs = [m["segments"] for m in msgs if m["from"] == n]
            first = at[0] if at else posted
            inside = [a for a in at if a <= first + window]
            span = inside[-1] - inside[0] if len(inside) > 1 else 0.0
            segments_inside = sum(m["segments"] for m in msgs if m["from"] == n and m["at"] <= first + window)
            gaps = sorted(b - a for a, b in itertools.pairwise(inside))
            per.append({"number": n, "sent_in_window": len(inside), "segments_in_window": segments_inside,
                        "rate_per_s": round((len(inside) - 1) / span, 4) if span else 0.0,
                        "rate_per_s_after_first_send": round((len(inside) - 2) / (inside[-1] - inside[1]), 4)
                        if len(inside) > 2 and inside[-1] > inside[1] else None,
                        "median_gap_s": round(gaps[len(gaps) // 2], 4) if gaps else None,
                        "min_gap_s": round(gaps[0], 4) if gaps else None,
                        "first_after_post_s": round(first - posted, 2), "max_segments": max(segs, default=0),
                        "max_allowed_in_window": int(window * rate) + 1})
        total = sum(p["rate_per_s"] for p in per)
        out = {"numbers": len(numbers), "rate_limit_per_number": rate, "window_s": window,
               "backlog_per_number": backlog, "webhook_statuses": dict(statuses), "jobs_left_at_end": left,
               "per_number": per, "total_rate_per_s": round(total, 4),
               "total_sent_in_window": sum(p["sent_in_window"] for p in per)}
        ok = set(statuses) == {"200"}
        if not ok:
            self.flag(f"pacing {len(numbers)}n: webhook statuses {dict(statuses)}")
        for p in per:
            if p["segments_in_window"] > p["max_allowed_in_window"]:
                ok = False
                self.flag(f"pacing: {p['number']} sent {p['segments_in_window']} segments in {window:g} s "
                          f"at {rate:g}/s (more than {p['max_allowed_in_window']})")
            if p["sent_in_window"] < 1:
                ok = False
                self.flag(f"pacing: {p['number']} sent nothing")
        if left == 0:
            self.flag(f"pacing {len(numbers)}n: the backlog ran out, so the pacer was not the bottleneck")
            ok = False
        out["ok"] = ok
        if self.p.name != "smoke":
            for p in per:
                self.goal(f"pacing {p['number']} ({len(numbers)} number(s)) send rate /s", p["rate_per_s"],
                          f"{rate:g} +- 5%", abs(p["rate_per_s"] - rate) <= 0.05 * rate)
            self.goal(f"pacing total send rate with {len(numbers)} number(s) /s", total,
                      f"{rate * len(numbers):g} +- 5%", abs(total - rate * len(numbers)) <= 0.05 * rate * len(numbers))
        return out

    def section_pacing(self) -> dict:
        one = self.pacing_run(PACED_NUMBERS[:1], 1.0)
        three = self.pacing_run(PACED_NUMBERS, 1.0)
        return {"ok": one["ok"] and three["ok"], "one_number": one, "three_numbers": three,
                "timestamps": "when the sandbox received each Messages.json POST (its received_at)"}

    def section_scale(self) -> dict:
        points = []
        for workers in self.p.scale_workers:
            got, _ = self.sophon_run(f"sophon-scale-w{workers}", "FULL", workers, [self.p.scale_connections],
                                     section="scale")
            points.extend(got)
        base = points[0].rps or 1
        return {"ok": all(p.ok for p in points), "sync": "FULL", "connections": self.p.scale_connections,
                "points": [{**p.to_json(), "speedup_vs_1_worker": round(p.rps / base, 2)} for p in points]}

    def section_history(self) -> dict:
        """An empty store, then one holding ``history_messages`` answered messages, ``--rounds``
        times over, interleaved like the ack section's servers; the ratios compare the medians."""
        runs: dict[str, list[dict]] = {"empty": [], "prefilled": []}
        for r in range(1, self.rounds + 1):
            tag = f"-r{r}" if self.rounds > 1 else ""
            for name, rows in (("empty", 0), ("prefilled", self.p.history_messages)):
                got, info = self.sophon_run(f"sophon-history-{name}{tag}", "FULL", 2, [self.p.history_connections],
                                            section="history", prefill=rows)
                runs[name].append({"round": r, "point": got[0].to_json(), "store_bytes_at_end": info["store_bytes"],
                                   "prefill": {k: v for k, v in info.items() if k.startswith("prefill_")}})
        both_ok = [i for i in range(self.rounds)
                   if runs["empty"][i]["point"]["ok"] and runs["prefilled"][i]["point"]["ok"]]

        def med(name: str, key: str) -> float | None:
            return statistics.median(runs[name][i]["point"][key] for i in both_ok) if both_ok else None

        def ratio(key: str) -> float | None:
            e, f = med("empty", key), med("prefilled", key)
            return round(f / e, 3) if e and f is not None else None

        per_round = [runs["prefilled"][i]["point"]["rps"] / runs["empty"][i]["point"]["rps"]
                     for i in both_ok if runs["empty"][i]["point"]["rps"]]
        return {"ok": all(x["point"]["ok"] for v in runs.values() for x in v), "sync": "FULL", "workers": 2,
                "connections": self.p.history_connections, "stored_inbound_messages": self.p.history_messages,
                "rounds": self.rounds, "empty": runs["empty"][0], "prefilled": runs["prefilled"][0],
                "all_rounds": runs,
                "medians": {name: {"rps": med(name, "rps"), "p99_ms": med(name, "p99_ms")} for name in runs},
                "rps_ratio_prefilled_vs_empty": ratio("rps"), "p99_ratio_prefilled_vs_empty": ratio("p99_ms"),
                "rps_ratio_range": [round(min(per_round), 3), round(max(per_round), 3)] if per_round else None}

    def section_rss(self) -> dict:
        if not any(r["kind"] == "sophon" for r in self.rss):  # nothing measured yet: one run of its own
            self.sophon_run("sophon-rss", "FULL", 2, [16], section="rss")
        by_kind: dict[str, float] = {}
        for r in self.rss:
            by_kind[r["kind"]] = max(by_kind.get(r["kind"], 0.0), r["max_worker_vmhwm_mb"])
        ok = all(r["max_worker_vmhwm_mb"] > 0 and len(r["worker_vmhwm_mb"]) == r["workers"] for r in self.rss)
        return {"ok": ok, "samples": self.rss, "max_worker_vmhwm_mb_by_kind": by_kind,
                "how": "VmHWM of each gunicorn worker (/proc/<pid>/status) at the end of each run"}

    # --- report ----------------------------------------------------------------------

    def report(self) -> dict:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=False,
                                capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, check=False, capture_output=True, text=True)
        result = {
            "schema": 1,
            "mode": self.p.name,
            "started_at": dt.datetime.fromtimestamp(self.started, dt.timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(time.time() - self.started, 1),
            "git": {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "mem_gb": mem_gb()},
            "settings": {
                "gunicorn_argv": [{f"127.0.0.1:{self.port}": "127.0.0.1:<port>", "99": "<workers>"}.get(a, a)
                                  for a in gunicorn_command(self.port, 99, self.threads, "<app>", self.access_log)],
                "apps": {"sophon": "sophon_core.app:create_app()", **APP_SPECS},
                "sophon_command": "sophon serve (the gunicorn argv above with Sophon's app, plus the reply sender"
                                  " process)", "sophon_replies": self.replies, "ack_rounds": self.rounds,
                "worker_class": "gthread", "threads_per_worker": self.threads,
                "access_log": "on (stdout) for every server" if self.access_log else "off for every server",
                "wrk": self.wrk_version, "wrk_threads": self.wrk_threads, "wrk_timeout_s": 30,
                "seconds_per_point": self.p.seconds, "warmup_s": self.p.warmup,
                "sandbox": "in the benchmark process (sophon_sms_twilio.sandbox.Sandbox)",
                "pinning": ({"server_cpus": sorted(self.server_cpus), "load_cpus": sorted(self.load_cpus),
                             "servers_seen_on": self.affinity_seen,
                             "load_seen_on": sorted(thread_affinities(os.getpid()))}
                            if self.server_cpus else "off: every process on every CPU"),
                "load": "wrk, pre-signed Twilio webhooks (unique MessageSid and idempotency token each)",
                "sophon_env": {"SOPHON_PIPELINE_THREADS": os.environ.get("SOPHON_PIPELINE_THREADS", "8 (default)"),
                               "SOPHON_SENDER_NICE": os.environ.get("SOPHON_SENDER_NICE", f"{DEFAULT_NICE} (default)"),
                               "SOPHON_AGENT_TIMEOUT": self.p.slow_agent_seconds + 40,
                               "SOPHON_LOG_LEVEL": "WARNING"},
                "profile": self.p.__dict__,
            },
            "sections": self.sections,
            "goals": self.goals,
            "flags": self.flags,
            "server_log_errors": self.log_errors,
            "boot_failures": self.boot_failures,
            "ok": not self.flags,
        }
        return result

    def partial(self, stop: BaseException) -> dict:
        """What a stopped run (Ctrl-C, SIGTERM) had measured: the finished sections, and every
        point of the one it was in, as far as it got."""
        result = self.report()
        result.update({"ok": False, "stopped": f"{type(stop).__name__} {getattr(stop, 'code', '') or ''}".strip(),
                       "points_measured": [p.to_json() for p in self.measured]})
        return result

    def close(self) -> None:
        self.box.stop()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def mem_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def variant_name(var: str, value: str) -> str:
    """The name of an ``--ack-variant`` server: ``FULL`` and the variable, e.g. ``FULL sender_nice=19``."""
    return f"FULL {var.removeprefix('SOPHON_').lower()}={value}".replace("/", "_")  # (a file name too)


def scheduling(pid: int | None) -> str | None:
    """``SCHED_IDLE`` or ``nice +N`` (normal policy) of ``pid``'s threads, as the reply sender set them."""
    if not pid:
        return None
    try:
        seen = {(os.sched_getscheduler(int(tid)),
                 int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16]))
                for tid in os.listdir(f"/proc/{pid}/task")}
    except (OSError, ValueError, IndexError):
        return None
    names = sorted("SCHED_IDLE" if policy == os.SCHED_IDLE else f"nice +{nice}" if policy == os.SCHED_OTHER
                   else f"policy {policy}" for policy, nice in seen)
    return ", ".join(names)


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of every thread of ``pid`` so far (0 when it is gone)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connections_per_worker(port: int, pids: Sequence[int]) -> list[int]:
    """How many established TCP connections to ``port`` each of ``pids`` holds, largest first.

    Gunicorn's workers take turns at accepting, and a keep-alive connection stays with the
    worker that accepted it: ``wrk`` opens all of its connections at once, so each run
    splits them among the workers differently (8/8, 11/5, 16/0 ...). A group commit's batch
    is made of the requests in one worker, so the split moves Sophon's figures."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
                inodes.add(f[9])
    counts = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # (gone)
            continue
        held = 0
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
        counts.append(held)
    return sorted(counts, reverse=True)


def cpu_idle(cpus: set[int] | None) -> tuple[int, int] | None:
    """(all, idle + iowait) jiffies of ``cpus`` (/proc/stat); None without pinning."""
    if not cpus:
        return None
    total = idle = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in values]
            total, idle = total + sum(v), idle + v[3] + v[4]
    return total, idle


def server_cpu(server: "Running") -> dict[str, float]:
    """CPU seconds so far of the server's workers (summed) and of Sophon's reply sender."""
    return {"workers": sum(cpu_seconds(p) for p in server.worker_pids()), "sender": cpu_seconds(server.sender_pid())}


def dirty_kib() -> int | None:
    """Data written to files that the kernel has not yet written to the disk (``Dirty`` and
    ``Writeback`` of /proc/meminfo, KiB): much of it at a point's start means the disk is
    busy with earlier writes while the point runs, and every fdatasync waits behind them."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(info["Dirty"].split()[0]) + int(info["Writeback"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def disk_counters(path: Path) -> dict[str, int] | None:
    """Counters of the disk holding ``path`` (/proc/diskstats): writes, KiB written,
    milliseconds spent writing, cache flushes (each fdatasync and fsync ends in one) and the
    milliseconds they took, and the reads (a store whose pages stay in the page cache reads
    next to nothing). None where the kernel does not say (no such line, old kernel)."""
    try:
        dev = os.stat(path).st_dev
        for line in Path("/proc/diskstats").read_text().splitlines():
            f = line.split()
            if (int(f[0]), int(f[1])) == (os.major(dev), os.minor(dev)) and len(f) >= 20:
                return {"writes": int(f[7]), "write_kib": int(f[9]) // 2, "write_ms": int(f[10]),
                        "flushes": int(f[18]), "flush_ms": int(f[19]), "reads": int(f[3]), "read_kib": int(f[5]) // 2}
    except (OSError, ValueError):
        pass
    return None


def store_bytes(db: Path, fold_log: bool = False) -> int:
    """The store's files, in bytes. ``fold_log`` (no server running): first copy the write-ahead
    log into the database file and empty it, so that the figure is the data, not how far the
    log grew between checkpoints."""
    if fold_log and db.exists():
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def prefill_store(db: Path, inbound: int, channel_id: str, agent: str, senders: Sequence[str]) -> dict:
    """Write ``inbound`` answered conversations turns straight into a new store: each an inbound
    message, its done job and its reply (so 2 x ``inbound`` rows in ``messages``), spread over
    the last 30 days and over the benchmark's senders, with the inbound message ids and webhook
    idempotency keys of the last ``KEEP_KEYS_SECONDS`` (the ones ``Store.prune`` keeps), in the
    schema of sophon_core.store."""
    from sophon_core.models import InboundMessage
    from sophon_core.pipeline import peer_session
    from sophon_core.store import KEEP_KEYS_SECONDS, Store, message_json

    started = time.monotonic()
    Store(db, "NORMAL")  # creates the schema
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    step = 30 * 86400 / max(1, inbound)
    conn.execute("BEGIN")
    msg_rows, job_rows, out_rows, key_rows, id_rows = [], [], [], [], []
    usage: collections.Counter = collections.Counter()
    for i in range(inbound):
        peer = senders[i % len(senders)]
        at = now - 30 * 86400 + i * step
        sid = signing.scattered_sid(f"feed:{i}")
        session = peer_session(agent, channel_id, peer)
        text = f"earlier message {i}"
        reply = f'Sophon default agent. You said: "{text}"'
        in_id, out_id = 2 * i + 1, 2 * i + 2
        msg_rows.append((in_id, channel_id, "in", sid, peer, session, text, "received", None, None, None, None, 1,
                         at, None, None))
        out_rows.append((out_id, channel_id, "out", signing.scattered_sid(f"sent:{i}"), peer, session, reply,
                         "delivered", None, in_id, i + 1, 0, 1, at + 1.5, at + 3, at))  # (turn_at: its message's)
        payload = message_json(InboundMessage(channel_id=channel_id, provider_message_id=sid, sender=peer,
                                              recipient=MAIN_NUMBER, text=text, received_at=at))
        job_rows.append((i + 1, in_id, channel_id, session, "done", 1, at, None, None, 1, None, payload, reply,
                         None, at, at + 1.5))
        day = time.strftime("%Y-%m-%d", time.gmtime(at))
        for counter in ("messages_in", "units_in", "messages_out", "units_out"):
            usage[(channel_id, day, counter)] += 1
        if at >= now - KEEP_KEYS_SECONDS:  # the message ids and webhook keys Store.prune has not forgotten yet
            key_rows.append((f"sms:feed-{sid}", at))
            id_rows.append((channel_id, sid, at))
    conn.executemany("INSERT INTO messages (id, channel_id, direction, provider_id, peer, session_key, text,"
                     " status, error, reply_to, job_id, part_no, units, created_at, updated_at, turn_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", msg_rows + out_rows)
    conn.executemany("INSERT INTO jobs (id, inbound_id, channel_id, session_key, state, attempts, not_before,"
                     " lease_owner, lease_until, lease_token, first_failure_at, payload, reply, error, created_at,"
                     " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", job_rows)
    conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?)", [(*k, v) for k, v in usage.items()])
    conn.executemany("INSERT INTO deliveries VALUES (?, ?)", key_rows)
    conn.executemany("INSERT INTO inbound_ids VALUES (?, ?, ?)", id_rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    # On the disk before the server starts, like a store that grew over 30 days: written with
    # synchronous=OFF, its pages would otherwise be written back by the kernel about 30 s
    # later (vm.dirty_expire_centisecs), during the measured point, ahead of its fdatasyncs.
    flushed = time.monotonic()
    fd = os.open(db, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"prefill_inbound": inbound, "prefill_message_rows": 2 * inbound, "prefill_jobs": inbound,
            "prefill_webhook_keys": len(key_rows),
            "prefill_bytes": store_bytes(db), "prefill_s": round(time.monotonic() - started, 1),
            "prefill_fsync_s": round(time.monotonic() - flushed, 2)}


# --- the table -----------------------------------------------------------------------------

def fmt(v, width: int, digits: int = 1) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return f"{v:,.{digits}f}".rjust(width)
    return str(v).rjust(width)


def print_table(r: dict) -> None:
    s = r["sections"]
    st = r["settings"]
    print(f"Sophon benchmark ({r['mode']}), {r['machine']['cpus']} CPUs, git {r['git']['commit']}"
          f"{' (dirty)' if r['git']['dirty'] else ''}; gunicorn gthread x {st['threads_per_worker']} threads, "
          f"access log {'on' if 'on' in st['access_log'] else 'off'} for every server; {st['wrk']}, "
          f"{st['wrk_threads']} wrk threads, {st['seconds_per_point']:g} s per point; everything on loopback")
    pin = st.get("pinning")
    print("CPU pinning: " + (f"servers on {cpu_list(set(pin['server_cpus']))}, wrk and the sandbox on "
                             f"{cpu_list(set(pin['load_cpus']))}" if isinstance(pin, dict) else "off"))
    if "ack" in s:
        print("\n1. Webhook acknowledgement, POST /api/channels/sms/webhook")
        print(f"{'server':<16}{'workers':>8}{'conns':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'non-2xx':>8}{'sock err':>9}  ok  {'replied':>8}{'owed':>7}{'drain s':>8}")
        for p in s["ack"]["points"]:
            name = p["server"] if p["server"] != "sophon" else f"sophon {p.get('variant') or p['sync']}"
            if s["ack"].get("rounds", 1) > 1:
                name = f"{name} r{p['round']}"
            owed = (f"{p['replies_during_load']:>8}{p['open_jobs_at_end']:>7}{fmt(p.get('drain_s'), 8, 1)}"
                    if "open_jobs_at_end" in p else "")
            print(f"{name:<16}{p['workers']:>8}{p['connections']:>6}{fmt(p['rps'], 9, 0)}{fmt(p['p50_ms'], 9)}"
                  f"{fmt(p['p99_ms'], 9)}{fmt(p['max_ms'], 9)}{p['non_2xx']:>8}"
                  f"{sum(p['socket_errors'].values()):>9}  {'yes' if p['ok'] else 'NO '}{owed}")
        nice = str(os.environ.get("SOPHON_SENDER_NICE") or DEFAULT_NICE).strip().lower()
        priority = "SCHED_IDLE" if nice == "idle" else f"nice +{nice}"
        where = {"sender": f"the reply sender process of `sophon serve` ({priority})",
                 "workers": "runner threads of the same workers"}[st.get("sophon_replies", "workers")]
        print(f"(Sophon answers every message: default agent, replies POSTed to the sandbox by {where}; "
              "replied = replies the sandbox accepted during the point, owed = jobs still open when the load "
              "stopped, drain = seconds until every message was answered; floor and quickstart store and send "
              "nothing)")
        rounds = s["ack"].get("rounds", 1)
        if rounds > 1:
            print(f"medians of {rounds} rounds (each round starts every server afresh; per worker count the "
                  "servers run back to back, in reverse order on even rounds; flagged points left out)")
            print(f"{'server':<16}{'workers':>8}{'conns':>6}{'req/s':>9}{'p99 ms':>9}")
            for m in s["ack"]["medians"]:
                print(f"{m['server']:<16}{m['workers']:>8}{m['connections']:>6}{fmt(m['rps'], 9, 0)}"
                      f"{fmt(m['p99_ms'], 9)}")
        print(f"{'ratios of req/s':<22}{'FULL/quick':>11}{'FULL/floor':>11}{'NORMAL/quick':>13}{'NORMAL/floor':>13}"
              + ("   FULL/quick per round: median (range)" if rounds > 1 else ""))
        for q in s["ack"]["ratios"]:
            spread = q.get("FULL_vs_quickstart_rps_range")
            print(f"{q['workers']} worker(s), {q['connections']:>3} conns  {fmt(q['FULL_vs_quickstart_rps'], 9, 2)}"
                  f"{fmt(q['FULL_vs_floor_rps'], 11, 2)}{fmt(q['NORMAL_vs_quickstart_rps'], 13, 2)}"
                  f"{fmt(q['NORMAL_vs_floor_rps'], 13, 2)}"
                  + (f"   {q['FULL_vs_quickstart_rps_per_round_median']:.2f} ({spread[0]:.2f} to {spread[1]:.2f})"
                     if spread else ""))
        for variant in s["ack"].get("variants", {}):
            print(f"Sophon {variant} (environment {s['ack']['variants'][variant]}), ratios of req/s:")
            for q in s["ack"]["ratios"]:
                spread = q.get(f"{variant}_vs_quickstart_rps_range")
                print(f"  {q['workers']} worker(s), {q['connections']:>3} conns: to the quick-start "
                      f"{fmt(q.get(f'{variant}_vs_quickstart_rps'), 5, 2)}"
                      + (f" (per round: median {q[f'{variant}_vs_quickstart_rps_per_round_median']:.2f}, "
                         f"{spread[0]:.2f} to {spread[1]:.2f})" if spread else "")
                      + f", to Sophon FULL {fmt(q.get(f'{variant}_vs_FULL_rps'), 5, 2)}")
    if "slow" in s:
        q = s["slow"]
        print(f"\n2. Ack latency vs agent (Sophon FULL, {q['workers']} workers, {q['connections']} conns; "
              f"slow agent {q['agent_seconds']:g} s per reply)")
        print(f"{'agent':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'non-2xx':>8}")
        rounds = q.get("rounds", 1)
        for p in q["points"]:
            name = p["agent"] + (f" r{p['round']}" if rounds > 1 else "")
            print(f"{name:<10}{fmt(p['rps'], 9, 0)}{fmt(p['p50_ms'], 9)}{fmt(p['p99_ms'], 9)}"
                  f"{fmt(p['max_ms'], 9)}{p['non_2xx']:>8}")
        if rounds > 1:
            print(f"medians of {rounds} rounds: p99 default {q['p99_ms_default']:.1f} ms, slow {q['p99_ms_slow']:.1f} ms;"
                  f" p99 slow/default per round {', '.join(fmt(x, 0, 2) for x in q['p99_ratio_per_round'])}")
        print(f"p99 slow/default = {fmt(q['p99_ratio_slow_vs_default'], 0, 2)} (goal <= 1.2); max ack with the "
              f"slow agent {q['max_ms_slow']:.0f} ms (Twilio gives up at 15,000 ms); slow-agent calls in flight "
              f"at the end: {q.get('slow_agent_calls_in_flight_at_end')}")
        refs = {p["server"]: p for p in s.get("ack", {}).get("points", [])
                if p["workers"] == q["workers"] and p["connections"] == q["connections"] and p["server"] != "sophon"}
        idle = q["points"][1]
        if refs:
            print(f"with its pipeline idle (slow agent), Sophon FULL acks {idle['rps']:.0f} req/s = "
                  + ", ".join(f"{idle['rps'] / r['rps']:.2f} x {name}" for name, r in sorted(refs.items()))
                  + f" ({q['workers']} workers, {q['connections']} conns)")
    if "e2e" in s:
        q = s["e2e"]
        p = q["point"]
        print(f"\n3. End to end, pacing off (Sophon FULL, 2 workers, {q['connections']} conns, default agent)")
        print(f"acked {q['inbound_acknowledged_200']} webhooks at {p['rps']:.0f} req/s (p99 {p['p99_ms']} ms); "
              f"stored {q['inbound_stored']}; replies accepted by the sandbox {q['replies_accepted']} "
              f"(unanswered {q['unanswered']}, twice {q['answered_twice']})")
        print(f"replies/s while webhooks arrived {q['replies_per_s_while_inbound']}, end-to-end "
              f"{q['e2e_msgs_per_s']} msg/s (first inbound to last reply); last reply "
              f"{q['last_reply_after_last_inbound_s']} s after the last inbound")
    if "pacing" in s:
        print("\n3b. Pacing (limits.sendRate 1 segment/s per number; sandbox-side timestamps)")
        for key in ("one_number", "three_numbers"):
            q = s["pacing"][key]
            rates = ", ".join(f"{p['number']} {p['rate_per_s']:.3f}/s ({p['sent_in_window']} in "
                              f"{q['window_s']:g} s)" for p in q["per_number"])
            print(f"{q['numbers']} number(s): {rates}; total {q['total_rate_per_s']:.3f}/s; "
                  f"jobs still queued at the end {q['jobs_left_at_end']}")
    if "scale" in s:
        q = s["scale"]
        print(f"\n4. Workers (Sophon FULL, {q['connections']} conns)")
        print(f"{'workers':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'speedup':>9}")
        for p in q["points"]:
            print(f"{p['workers']:>8}{fmt(p['rps'], 9, 0)}{fmt(p['p50_ms'], 9)}{fmt(p['p99_ms'], 9)}"
                  f"{fmt(p['speedup_vs_1_worker'], 9, 2)}")
    if "history" in s:
        q = s["history"]
        print(f"\n4b. Store history (Sophon FULL, 2 workers, {q['connections']} conns)")
        print(f"{'store':<40}{'file MB':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        for i in range(q["rounds"]):
            for name in ("empty", "prefilled"):
                run = q["all_rounds"][name][i]
                p, pre = run["point"], run["prefill"].get("prefill_bytes")
                what = "empty" if name == "empty" else (f"{q['stored_inbound_messages']:,} answered messages "
                                                        f"({pre / 2**20:.0f} MB)")
                if q["rounds"] > 1:
                    what = f"r{i + 1} {what}"
                print(f"{what:<40}{fmt(run['store_bytes_at_end'] / 2**20, 9)}{fmt(p['rps'], 9, 0)}"
                      f"{fmt(p['p50_ms'], 9)}{fmt(p['p99_ms'], 9)}")
        if q["rounds"] > 1:
            print(f"medians of {q['rounds']} rounds: empty {fmt(q['medians']['empty']['rps'], 0, 0)} req/s, "
                  f"prefilled {fmt(q['medians']['prefilled']['rps'], 0, 0)} req/s; per-round ratio "
                  f"{q['rps_ratio_range']}")
        print(f"prefilled/empty: req/s x{q['rps_ratio_prefilled_vs_empty']}, p99 x{q['p99_ratio_prefilled_vs_empty']}")
    if "rss" in s:
        print("\n5. Peak RSS per gunicorn worker (VmHWM, MiB, at the end of each run)")
        for e in s["rss"]["samples"]:
            print(f"{e['server']:<28}{e['section']:<9}{', '.join(f'{v:.0f}' for v in e['worker_vmhwm_mb'])}")
    if r["goals"]:
        print("\nGoals")
        for g in r["goals"]:
            print(f"  {'met   ' if g['met'] else 'MISSED'} {g['goal']}: {g['value']:.4g} (target {g['target']})")
    if r["boot_failures"]:
        print("\nServers that failed to boot and were started again (see their logs):")
        for e in r["boot_failures"]:
            print(f"  {e['server']} attempt {e['attempt']}: {e['cause'][:160]}")
    if r["server_log_errors"]:
        print("\nERROR lines in the servers' own logs (the requests above were answered; see the logs):")
        for e in r["server_log_errors"]:
            print(f"  {e['server']}: {e['error_lines']} line(s), e.g. {e['first'][:160]}")
    print("\n" + ("No request or correctness errors." if r["ok"] else "FLAGGED:\n  " + "\n  ".join(r["flags"])))


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description="Sophon's webhook and pipeline benchmark "
                                 "(loopback only). Default: the full run, about 15 minutes on 2 cores.")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer seconds per point, shorter pacing window")
    mode.add_argument("--smoke", action="store_true", help="seconds, tiny counts: checks correctness only")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default all): {','.join(SECTIONS)}")
    ap.add_argument("--ack-servers", default=",".join(ACK_SERVERS),
                    help=f"servers of the ack section (default all): {','.join(ACK_SERVERS)}; e.g. FULL for "
                         "quick A/B runs of Sophon alone")
    ap.add_argument("--ack-variant", action="append", default=[], metavar="SOPHON_VAR=VALUE",
                    help="one more Sophon FULL server in the ack section, with this environment variable set (e.g. "
                         "SOPHON_SENDER_NICE=idle), interleaved with the others in every round and compared with "
                         "them; may be repeated. PYTHONPATH=<folder> runs the sophon_core of another checkout "
                         "(e.g. `git worktree add /tmp/old <commit>`): two commits side by side")
    ap.add_argument("--ack-prefill", type=int, default=0, metavar="N",
                    help="the ack section's Sophon stores start with N answered conversations (spread over 30 "
                         "days, as the history section's), so that every point measures a grown store "
                         "(default 0: each point on a new store)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON results file (default bench/results/latest.json, smoke: bench/results/smoke.json)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per wrk point (overrides the mode)")
    ap.add_argument("--ack-workers", default=None,
                    help="worker counts of the ack section (default 1,2; the smoke run 1); e.g. 1 for quick "
                         "A/B runs of the 1-worker points")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the ack, slow and history sections' servers this many times, interleaved (every server "
                         "once, then again; in the ack section back to back per point, in reverse order on "
                         "even rounds); the ratios use each point's median, with the median and the range of the "
                         "per-round ratios")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                    help=f"gunicorn threads per worker, for every server (default {DEFAULT_THREADS}, as `sophon "
                         "serve`)")
    ap.add_argument("--access-log", action="store_true", help="access log on (stdout) for every server")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (stores, request files)")
    ap.add_argument("--replies", choices=("sender", "workers"), default="sender",
                    help="Sophon's SOPHON_REPLIES (default sender, as `sophon serve`): replies from the reply "
                         "sender process, or from runner threads in every gunicorn worker")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                    help="servers under test on half the CPUs, wrk and the sandbox on the others (default: on "
                         "with 2 CPUs or more); --no-pin: everything shares every CPU")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    ack_servers = [s.strip() for s in args.ack_servers.split(",") if s.strip()]
    if set(ack_servers) - set(ACK_SERVERS):
        ap.error(f"unknown --ack-servers {', '.join(sorted(set(ack_servers) - set(ACK_SERVERS)))}; "
                 f"choose from {', '.join(ACK_SERVERS)}")
    variants = []
    for raw in args.ack_variant:
        var, eq, value = raw.partition("=")
        if var == "PYTHONPATH" and eq:
            if not (Path(value) / "sophon_core" / "__init__.py").is_file():
                ap.error(f"--ack-variant PYTHONPATH={value}: no sophon_core there (give the folder of another "
                         "checkout, e.g. one made with `git worktree add`)")
        elif not eq or not var.startswith("SOPHON_") or not var[7:].replace("_", "").isalnum():
            ap.error(f"--ack-variant takes SOPHON_NAME=VALUE (e.g. SOPHON_SENDER_NICE=19) or PYTHONPATH=<checkout>, "
                     f"not {raw!r}")
        variants.append((var, value))
    if args.ack_prefill < 0:
        ap.error(f"--ack-prefill takes a number of conversations, 0 or more, not {args.ack_prefill}")
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.ack_workers:
        try:
            workers = tuple(int(w) for w in args.ack_workers.split(",") if w.strip())
        except ValueError:
            workers = ()
        if not workers or min(workers) < 1:
            ap.error(f"--ack-workers takes worker counts such as 1 or 1,2, not {args.ack_workers!r}")
        profile = dataclasses.replace(profile, ack_workers=workers)
    out = args.out or BENCH / "results" / ("smoke.json" if args.smoke else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        found = tools.ensure_all(log)
    except tools.MissingTool as exc:
        log(f"bench: {exc}")
        return 3
    bench = Bench(profile, out=out, only=only, wrk=found["wrk"], wrk_version=found["wrk_version"],
                  wrk_threads=args.wrk_threads, gunicorn_threads=args.threads, access_log=args.access_log,
                  keep=args.keep, seconds=args.seconds, ack_servers=ack_servers, pin=args.pin,
                  replies=args.replies, rounds=args.rounds, ack_variants=variants, ack_prefill=args.ack_prefill)
    # SIGTERM (``timeout``, a CI runner) unwinds like Ctrl-C: every server and the sandbox are
    # stopped on the way out (the servers run in sessions of their own and would outlive us)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    partial = out.with_name(out.stem + ".partial.json")  # what a stopped run had measured
    try:
        result = bench.run()
    except (KeyboardInterrupt, SystemExit) as stop:  # keep what was measured, then unwind as before
        try:
            partial.write_text(json.dumps(bench.partial(stop), indent=1, default=str) + "\n")
            log(f"bench: stopped; the {len(bench.measured)} point(s) measured so far are in {partial}")
        except Exception as exc:  # (the stop still wins: servers are stopped, the exit code stays)
            log(f"bench: stopped; could not write {partial}: {exc}")
        raise
    finally:
        bench.close()
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    partial.unlink(missing_ok=True)  # (an earlier stopped run's)
    print_table(result)
    print(f"\nJSON: {out}" + (f"; temporary files kept in {bench.tmp}" if args.keep else ""))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
