"""What storing a webhook's message costs: the store's group commit alone, in one process or several.

The webhook path without HTTP: ``--threads`` threads each call ``Store.accept_inbound``
in a loop, as gunicorn's request threads of one worker do, on a real SQLite file under
``FULL`` (each call returns once an fsync of the write-ahead log covers its commit). The
group commit stores the calls that arrive together in one transaction with one fsync (a
batch). Each message is what a Twilio webhook brings (a scattered ``MessageSid``, an
idempotency key, one of 200 senders, per-sender sessions), after ``--prefill`` messages, and
is checked against the channel's hourly limit per sender as the webhook does (bench/run's
channels set it out of reach, so every message is answered: each check counts all of that
sender's messages of the last hour).
``--history 0,100000,200000`` measures each thread count again on a store that first holds
that many answered conversations over 30 days (what ``bench/run``'s history section
prefills), to see whether a message costs more as the store grows.

``--processes 1,2`` measures each thread count again with that many processes, each with
its own ``Store`` on the same file and that many threads, as gunicorn's workers share a
data folder: each process group-commits its own calls, and each commit of one empties
the SQLite page cache of the others (they read their pages again: ``reads``).

Prints, per row, the CPU time per message (of every process), messages/s, the batches
(one commit and one fsync each) and their mean size, the read system calls per message
(``/proc/self/io``: pages SQLite reads from the OS), and checks that every message was
stored once with its job. With one thread each message is a batch of its own; with more,
the calls that wait for a batch's fsync make the next one. CPU time, not wall time: the
machine's speed still moves it (compare figures of one run), the disk's latency does not.
No network.

    .venv/bin/python bench/store_cost.py [--threads 1,2,4,8,16] [--processes 1]
        [--messages 4000] [--prefill 2000] [--history 0] [--cpu 0] [--out FILE]

``--messages`` is per row, split evenly among its processes. ``--cpu N`` pins the
processes to CPU N first (as ``bench/run`` pins the servers).
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from signing import scattered_sid, sender_numbers  # noqa: E402
from sophon_bench import MAIN_NUMBER, OPEN_LIMITS, prefill_store  # noqa: E402
from sophon_core.models import InboundMessage  # noqa: E402
from sophon_core.pipeline import peer_session  # noqa: E402
from sophon_core.store import Store  # noqa: E402

CHANNEL = "sms"
SENDERS = sender_numbers()  # the senders of bench/run's webhooks
PER_HOUR = OPEN_LIMITS["inboundPerSenderPerHour"]  # bench/run's channels' limits.inboundPerSenderPerHour


def message(n: int, prefix: str) -> tuple[InboundMessage, str, str]:
    """The ``n``-th message: ``(message, session key, delivery key)`` as the webhook makes them."""
    sender = SENDERS[n % len(SENDERS)]
    sid = scattered_sid(f"{prefix}:{n}")
    msg = InboundMessage(channel_id=CHANNEL, provider_message_id=sid, sender=sender, recipient=MAIN_NUMBER,
                         text=f"bench m{n:x}", metadata={"FromState": "CA", "FromCountry": "US", "NumSegments": "1"})
    return msg, peer_session("default", CHANNEL, sender), f"sms:{prefix}-{sid}"


def read_calls() -> int | None:
    """Read system calls of this process so far (Linux ``/proc/self/io``), None elsewhere."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("syscr:"))
    except (OSError, StopIteration, ValueError):
        return None


def run(store: Store, threads: int, first: int, count: int, prefix: str) -> dict:
    """``count`` messages from ``threads`` threads at once; what it cost (``row`` makes a row of it)."""
    batches = 0
    lock = threading.Lock()

    def queued() -> None:  # the store calls it once per batch that queued a job (every batch here)
        nonlocal batches
        with lock:
            batches += 1

    store.on_queued = queued
    work = [message(first + i, prefix) for i in range(count)]
    outcomes: list[str] = []
    start = threading.Barrier(threads + 1)

    def worker(mine: list) -> None:
        start.wait()
        got = [store.accept_inbound(msg, session, PER_HOUR, delivery_key=key)[0] for msg, session, key in mine]
        with lock:
            outcomes.extend(got)

    pool = [threading.Thread(target=worker, args=(work[i::threads],)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    cpu, began, reads = time.process_time(), time.perf_counter(), read_calls()
    for t in pool:
        t.join()
    cpu, ended = time.process_time() - cpu, time.perf_counter()
    reads = None if reads is None else read_calls() - reads
    store.on_queued = None
    if outcomes.count("queued") != count:
        raise SystemExit(f"store_cost: {count - outcomes.count('queued')} of {count} messages not queued")
    return {"batches": batches, "cpu_s": cpu, "began": began, "ended": ended, "reads": reads}


def row(threads: int, count: int, figures: list[dict]) -> dict:
    """One row from what each process's ``run`` measured (``count`` messages in all)."""
    batches = sum(f["batches"] for f in figures)
    reads = None if any(f["reads"] is None for f in figures) else sum(f["reads"] for f in figures)
    wall = max(f["ended"] for f in figures) - min(f["began"] for f in figures)  # (one clock for every process)
    return {"threads": threads, "messages": count, "batches": batches, "batch_mean": count / max(1, batches),
            "cpu_us_per_message": sum(f["cpu_s"] for f in figures) / count * 1e6,
            "messages_per_s": count / wall, "reads_per_message": None if reads is None else reads / count}


def _child(k: int, path: Path, threads: int, first: int, count: int, prefix: str, go, results) -> None:
    """Process ``k`` of a row: a ``Store`` of its own on the shared file (opened after the fork); its
    figures, or its error, go to ``results``."""
    try:
        store = Store(path, synchronous="FULL")
        go.wait()  # (every process's store open: they start together)
        results.put((k, run(store, threads, first, count, prefix)))
    except BaseException as exc:
        go.abort()  # the others stop waiting for this one
        results.put((k, {"error": f"{type(exc).__name__}: {exc}"}))


def run_processes(path: Path, processes: int, threads: int, first: int, count: int, prefix: str) -> dict:
    """``count`` messages from ``processes`` processes of ``threads`` threads each, all at once.

    The caller holds no SQLite connection to ``path`` meanwhile: SQLite's locks belong to a
    process, and a child forked with its parent's connections open would take them for its
    own. Should a process fail or die, the others are stopped and the row fails, naming it."""
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Barrier(processes, timeout=120), ctx.Queue()
    shares = [count // processes + (1 if k < count % processes else 0) for k in range(processes)]
    starts = [first + sum(shares[:k]) for k in range(processes)]
    children = [ctx.Process(target=_child, args=(k, path, threads, starts[k], shares[k], prefix, go, results),
                            daemon=True) for k in range(processes)]
    for child in children:
        child.start()
    got: dict[int, dict] = {}
    failure = None
    while failure is None and len(got) < processes:
        try:
            k, figures = results.get(timeout=1)
        except queue.Empty:
            dead = [k for k, c in enumerate(children) if k not in got and c.exitcode is not None]
            if dead:
                failure = (f"process {dead[0] + 1} of {processes} exited with {children[dead[0]].exitcode} "
                           "before reporting")
            continue
        got[k] = figures
        if "error" in figures:
            failure = f"process {k + 1} of {processes}: {figures['error']}"
    if failure is not None:
        for child in children:
            if child.is_alive():
                child.terminate()
    for child in children:
        child.join()
    if failure is not None:
        raise SystemExit(f"store_cost: {processes} processes x {threads} threads: {failure}")
    return row(threads, count, list(got.values()))


def stored(path: Path) -> tuple[int, int, int]:
    """(inbound messages, distinct MessageSids among them, jobs) in the store, read on a connection of our own."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*), COUNT(DISTINCT provider_id), (SELECT COUNT(*) FROM jobs)"
                          " FROM messages WHERE direction = 'in'").fetchone()
    finally:
        db.close()


def measure(folder: Path, history: int, counts: list[int], procs: list[int],
            args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Every process and thread count on a fresh store holding ``history`` answered conversations first."""
    path = folder / f"history-{history}" / "sophon.db"
    path.parent.mkdir()
    if history:  # the rows of bench/run's history section
        prefill_store(path, history, CHANNEL, "default", SENDERS)
    store = Store(path, synchronous="FULL")
    prefix = os.urandom(4).hex()
    if args.prefill:
        run(store, 8, 0, args.prefill, prefix)
    rows, first = [], args.prefill
    for processes in procs:
        for threads in counts:
            store.checkpoint()  # (the pipeline's heartbeat does this every second)
            if processes == 1:
                got = row(threads, args.messages, [run(store, threads, first, args.messages, prefix)])
            else:
                store = None  # closes its connections (see run_processes), then a new one for the next row
                gc.collect()
                got = run_processes(path, processes, threads, first, args.messages, prefix)
                store = Store(path, synchronous="FULL")
            rows.append({"history": history, "processes": processes, **got})
            first += args.messages
    count, distinct, jobs = stored(path)
    return rows, {"history": history, "stored": count, "distinct": distinct, "jobs": jobs,
                  "expected": history + first, "bytes": sum(f.stat().st_size for f in path.parent.iterdir())}


def numbers(ap: argparse.ArgumentParser, option: str, text: str, least: int) -> list[int]:
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        ap.error(f"{option} takes comma-separated numbers, not {text!r}")
    if min(values) < least:
        ap.error(f"{option}: each number must be {least} or more, not {text!r}")
    return values


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2,4,8,16", help="comma-separated thread counts (default 1,2,4,8,16)")
    ap.add_argument("--processes", default="1",
                    help="comma-separated process counts, each process with its own Store on the same file "
                         "(default 1)")
    ap.add_argument("--messages", type=int, default=4000,
                    help="messages per row, split among its processes (default 4000)")
    ap.add_argument("--prefill", type=int, default=2000, help="messages stored before measuring (default 2000)")
    ap.add_argument("--history", default="0",
                    help="comma-separated sizes of a history of answered conversations to store first, each "
                         "on a store of its own (default 0)")
    ap.add_argument("--cpu", type=int, help="pin the processes to that CPU first")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    counts = numbers(ap, "--threads", args.threads, 1)
    sizes = numbers(ap, "--history", args.history, 0)
    procs = numbers(ap, "--processes", args.processes, 1)
    if args.messages < max(counts) * max(procs):
        ap.error(f"--messages {args.messages}: give at least the largest thread count times the largest "
                 f"process count ({max(counts)} x {max(procs)} = {max(counts) * max(procs)})")
    if args.prefill < 0:
        ap.error(f"--prefill {args.prefill}: give 0 or more")
    if len(set(sizes)) != len(sizes):
        ap.error(f"--history: each size once, not {args.history!r}")
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except (OSError, ValueError):
            ap.error(f"--cpu {args.cpu}: not a CPU this process may run on "
                     f"(these are: {','.join(map(str, sorted(os.sched_getaffinity(0))))})")
    rows, stores = [], []
    with tempfile.TemporaryDirectory(prefix="sophon-store-cost-") as tmp:
        for history in sizes:
            got, store = measure(Path(tmp), history, counts, procs, args)
            rows += got
            stores.append(store)
    result = {"rows": rows, "stores": stores, "cpu": args.cpu, "sqlite": sqlite3.sqlite_version}
    print(f"{'history':>7} {'processes':>9} {'threads':>7} {'messages':>8} {'batches':>7} {'mean batch':>10} "
          f"{'CPU us/message':>14} {'messages/s':>10} {'reads/message':>13}")
    for r in rows:
        reads = "-" if r["reads_per_message"] is None else f"{r['reads_per_message']:.1f}"
        print(f"{r['history']:>7} {r['processes']:>9} {r['threads']:>7} {r['messages']:>8} {r['batches']:>7} "
              f"{r['batch_mean']:>10.1f} {r['cpu_us_per_message']:>14.0f} {r['messages_per_s']:>10.0f} {reads:>13}")
    wrong = []
    for st in stores:
        print(f"history {st['history']}: stored {st['stored']} inbound messages ({st['distinct']} distinct) and "
              f"{st['jobs']} jobs of {st['expected']}; {st['bytes'] / 1e6:.1f} MB")
        if not st["stored"] == st["distinct"] == st["jobs"] == st["expected"]:
            wrong.append(st)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if wrong:
        raise SystemExit(f"store_cost: a store does not hold each message once with its job: {wrong}")
    return result


if __name__ == "__main__":
    main()
