"""Profile a Sophon gunicorn worker under the benchmark's webhook load (py-spy).

Starts the sandbox and Sophon like bench/run does (same gunicorn settings), puts
wrk load on it and records every worker with ``py-spy record --format raw``
meanwhile, then prints the hottest functions (inclusive and self, file:line) of
the whole worker and of its request threads. Loopback only. py-spy is installed
into the venv with pip when missing (benchmark only).

    .venv/bin/python bench/profile_ack.py [--agent default|slow20] [--sync FULL|NORMAL]
        [--workers 1] [--connections 16] [--threads 16] [--seconds 15] [--prefill 100000] [--idle | --gil]
        [--no-pin] [--sender]

``--idle`` samples waiting threads too (wall clock: lock and fsync waits show up);
without it only threads py-spy sees running are sampled (threads waiting for the
GIL count as running); ``--gil`` keeps only the thread holding the GIL.
``--sender`` records the reply sender process too (its own summary).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sophon_bench as sb


def ensure_py_spy() -> str:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists() and importlib.util.find_spec("py_spy") is None:
        sb.log("profile: installing py-spy into the venv with pip (benchmark only)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(exe)


# frames every sample of a thread has: left out of the inclusive ranking
BORING = ("(threading.py:", "(concurrent/futures/thread.py:", "ThreadWorker.handle (", "ThreadWorker.run (",
          "(gunicorn/arbiter.py:", "(gunicorn/app/", "(gunicorn/workers/base.py:", "<module> (", "run (gunicorn/",
          "(pluggy/_", "App.__call__ (falcon/app.py:")


def summarize(raw: Path, top: int, only_thread: str | None = None) -> str:
    """Inclusive and self sample shares per frame from py-spy's collapsed stacks."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if only_thread and not any(only_thread in f for f in frames[:1]):
            continue
        n = int(count)
        total += n
        for f in set(frames[1:] if frames[0].startswith(("thread", "process")) else frames):
            if not any(skip in f for skip in BORING):
                inclusive[f] += n
        own[frames[-1]] += n
    if not total:
        return "(no samples)"
    out = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"-- top {top} by {title} share")
        for frame, n in counter.most_common(top):
            out.append(f"{100 * n / total:6.1f}%  {frame}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default="default", choices=("default", "slow20"))
    ap.add_argument("--sync", default="FULL", choices=("FULL", "NORMAL"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--prefill", type=int, default=0, help="answered messages written into the store first")
    ap.add_argument("--idle", action="store_true", help="sample waiting threads too (wall clock)")
    ap.add_argument("--native", action="store_true", help="native frames too (SQLite's C code, the GIL)")
    ap.add_argument("--gil", action="store_true", help="only samples of the thread holding the GIL (where the "
                    "Python CPU time goes; without it, threads waiting for the GIL or a lock count too)")
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--threads", type=int, default=sb.DEFAULT_THREADS,
                    help="gunicorn threads per worker (as bench/run --threads)")
    ap.add_argument("--sender", action="store_true", help="record the reply sender process too")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                    help="CPU pinning as bench/run (default: on with 2 CPUs or more)")
    ap.add_argument("--out", type=Path, default=sb.BENCH / "results" / "profiles")
    args = ap.parse_args()
    py_spy = ensure_py_spy()
    found = sb.tools.ensure_all(sb.log)
    args.out.mkdir(parents=True, exist_ok=True)
    profile = sb.Profile(**{**sb.PROFILES["full"].__dict__, "seconds": args.seconds, "warmup": 1,
                            "slow_agent_seconds": 20})
    bench = sb.Bench(profile, out=args.out / "unused.json", only=[], wrk=found["wrk"],
                     wrk_version=found["wrk_version"], wrk_threads=2, gunicorn_threads=args.threads, access_log=False,
                     keep=False, seconds=None, pin=args.pin)
    name = f"{args.agent}-{args.sync}-w{args.workers}-c{args.connections}-t{args.threads}" + (
        f"-prefill{args.prefill}" if args.prefill else "") + ("-idle" if args.idle else "") + (
        "-native" if args.native else "") + ("-gil" if args.gil else "")
    try:
        env = bench.sophon_env(f"profile-{name}", [bench.channel("sms", sb.MAIN_NUMBER, agent=args.agent)],
                               args.sync)
        if args.prefill:
            sb.prefill_store(Path(env["SOPHON_DATA_DIR"]) / "sophon.db", args.prefill, "sms", args.agent,
                             bench.signer.senders)
        with bench.server(f"profile-{name}", "sophon", env, args.workers, hard_stop=True) as srv:
            bench.warmup(srv, drain=args.agent == "default")
            raws = []
            spies = []
            pids = srv.worker_pids() + ([srv.sender_pid()] if args.sender and srv.sender_pid() else [])
            for pid in pids:
                raw = args.out / f"{name}-{pid}.txt"
                cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate",
                       str(args.rate), "--format", "raw", "--threads", "--nonblocking", "-o", str(raw)]
                if args.idle:
                    cmd.append("--idle")
                if args.gil:
                    cmd.append("--gil")
                if args.native:  # py-spy must pause the process for native stacks
                    cmd.remove("--nonblocking")
                    cmd.append("--native")
                spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                raws.append(raw)
            result: dict = {}
            loader = threading.Thread(target=lambda: result.update(
                point=bench.load(srv, args.seconds, args.connections)))
            loader.start()
            for spy in spies:
                _, err = spy.communicate(timeout=args.seconds + 60)
                if spy.returncode != 0:
                    sb.log(f"profile: py-spy failed: {err.decode(errors='replace')[-500:]}")
            loader.join()
        point = result["point"]
        print(f"{name}: {point.rps:.0f} req/s, p50 {point.p50_ms} ms, p99 {point.p99_ms} ms, "
              f"statuses {point.statuses}")
        for raw in raws:
            if raw.exists():
                print(f"\n== {raw} (whole worker)")
                print(summarize(raw, args.top))
                print(f"\n== {raw} (request threads only: gunicorn's ThreadPoolExecutor workers)")
                print(summarize(raw, args.top, only_thread="ThreadPoolExecutor"))
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
