"""The reply sender: the pipeline's runner threads in a process of their own.

``sophon serve`` (and ``sophon sms demo``) start gunicorn for the webhooks and, next
to it, this process (``python -m sophon_core.sender``), which claims the stored jobs
and answers them: agent, split, pacing, send, retries, leases, delivery bookkeeping
(everything ``Pipeline`` does). The gunicorn workers then only check, store and
acknowledge (``SOPHON_REPLIES=sender``), and wake the sender with a datagram after
each group commit that queued a message (``notify``, from ``Store.on_queued``: one
per batch, sent once the batch is committed); the sender also polls the store, so a
lost wake-up costs at most ``pipeline.IDLE_POLL``.

Why a process of its own: a worker that also ran the agent and the provider calls
spent most of its CPU (and the GIL) on them, and acknowledgements waited. The
sender runs at the lowest CPU priority (``SOPHON_SENDER_NICE``, default 19): when the
CPU is short, webhooks, which Twilio gives up on after 15 s, come first, and replies
catch up as soon as the burst is over; the messages wait in the store meanwhile,
durably. ``SOPHON_SENDER_NICE=idle`` puts its threads under Linux's ``SCHED_IDLE``
instead (they run only when no other process wants the CPU). Measured with
bench/run (interleaved rounds, 1 worker): the webhooks' median req/s 1 to 4% higher, half as
many replies sent while the load lasts. Not the default: against another process
that keeps every CPU busy (a local model, a build) a ``SCHED_IDLE`` sender gets
about a third of a nice-19 one's small share, and while it holds the store's write
lock the webhooks wait for it.
A hung or CPU-hungry agent never slows the webhooks either.

Nice alone does not keep the sender out of the webhooks' way under a saturating load:
its commits take the store's write lock, a webhook batch then waits for a sender the
scheduler barely runs, and the worker's idle moments go to the sender (measured with
bench/run on one CPU: 8 to 15% of it, and with one worker 13 to 17% fewer webhooks per
second than with the yield below). So it also yields
(``SOPHON_SENDER_YIELD``, default on): each webhook worker reports the CPU share it used
over the last ``LOAD_WINDOW`` in its wake-ups, and while the workers together use
``BUSY_SHARE`` or more of the CPUs the sender may run on, it starts no new reply
(``LoadGate``); replies already under way finish. It yields ``MAX_HOLD`` seconds at most
in one go, then answers for ``FREE_AFTER`` seconds whatever the load, so that a load that
never ends cannot stop replies altogether.

The process holds an exclusive lock on ``SOPHON_DATA_DIR/sender.lock`` while it runs
(``running`` checks it; ``/healthz`` reports it), so a second sender for the same
data folder refuses to start. It stops on SIGTERM or SIGINT (jobs in hand finish,
up to 20 s; their leases cover a hard stop) and when the process that started it is
gone. ``sophon serve`` starts it again if it dies.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import fcntl
import functools
import hashlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("sophon.sender")

LOCK_NAME = "sender.lock"
DEFAULT_NICE = "19"  # the lowest nice value: the sender gets what the webhooks leave (see above)
STOP_TIMEOUT = 20.0  # seconds jobs in hand get to finish on SIGTERM (gunicorn's graceful timeout)

# Yielding to the webhooks (see the module docstring and LoadGate).
LOAD_WINDOW = 0.2  # seconds: a webhook worker reports the CPU share it used over at least this long
BUSY_SHARE = 0.75  # the workers' CPU use, as a share of the CPUs the sender may use, from which it yields
HOLD = 0.5  # seconds one busy report holds new replies back (a busy worker reports every LOAD_WINDOW)
STALE = 1.0  # seconds after which a worker's report no longer counts (it went quiet: no more webhooks)
MAX_HOLD = 10.0  # seconds the sender yields at most in one go ...
FREE_AFTER = 2.0  # ... before it answers for this long whatever the load
YIELD_LOG_EVERY = 60.0  # seconds between the log lines that count the sender's yields

_notify_sock: socket.socket | None = None
_notify_pid = 0


@functools.lru_cache(maxsize=16)
def wake_address(data_dir: Path) -> str:
    """The sender's wake-up socket: an abstract Unix datagram address (Linux), one per data folder."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]
    return f"\0sophon-sender-{digest}"


def notify(data_dir: Path, cpu_share: float | None = None) -> None:
    """Wake the sender of ``data_dir`` (from a webhook worker, after it queued a job).

    :param cpu_share: the CPU this worker used over its last ``LOAD_WINDOW`` or more
        (1.0: one CPU all the time), for the sender's ``LoadGate``.

    Never blocks and never fails: with no sender listening, or its queue full, the
    datagram is dropped and the sender finds the job at its next poll.
    """
    payload = b"!" if cpu_share is None else f"load {os.getpid()} {cpu_share:.3f}".encode()
    global _notify_sock, _notify_pid
    try:
        if _notify_sock is None or _notify_pid != os.getpid():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            _notify_sock, _notify_pid = sock, os.getpid()
        _notify_sock.sendto(payload, wake_address(data_dir))
    except OSError:
        pass


def usable_cpus() -> float:
    """How many CPUs this process may use: its CPU affinity, or the CPU quota of its
    cgroup (``cpu.max``, a container's limit) where that is lower."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = float(os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return max(cpus, 0.01)


class LoadGate:
    """When the reply sender yields to the webhooks: from the workers' CPU reports
    (``notify``), while they together use ``BUSY_SHARE`` of ``cpus`` or more, new replies
    wait until ``hold_until`` (a ``clock`` time), at most ``MAX_HOLD`` seconds in one go,
    then none for ``FREE_AFTER`` seconds. Used by the sender's one listening thread."""

    def __init__(self, cpus: float, clock: Callable[[], float] = time.monotonic):
        self.cpus, self.clock = cpus, clock
        self.hold_until = 0.0
        self.share = 0.0  # the workers' CPU use at the last report, in CPUs
        self.holds = 0  # holds begun
        self.held = 0.0  # seconds held in all
        self._reports: dict[int, tuple[float, float]] = {}  # worker pid -> (CPU share, when)
        self._held_since: float | None = None  # when the current hold began
        self._free_until = 0.0

    def report(self, pid: int, share: float) -> None:
        """A worker's CPU share (1.0: one CPU) over its last window; a share that is not a
        number from 0 to 1024, or a pid below 1, is ignored (any local process may send one)."""
        if pid < 1 or not (math.isfinite(share) and 0.0 <= share <= 1024.0):
            return
        now = self.clock()
        self._reports[pid] = (share, now)
        for gone in [p for p, (_, at) in self._reports.items() if now - at > STALE]:
            del self._reports[gone]
        self.share = sum(s for s, _ in self._reports.values())
        if self.share < BUSY_SHARE * self.cpus or now < self._free_until:
            return
        if self.hold_until <= now:  # not holding: the last hold ran out
            if self._held_since is not None and self.hold_until >= self._held_since + MAX_HOLD:
                self._held_since = None  # it ran out at its cap: answer for FREE_AFTER first
                self._free_until = self.hold_until + FREE_AFTER
                if now < self._free_until:
                    return
            self._held_since = now
            self.holds += 1
        until = min(now + HOLD, self._held_since + MAX_HOLD)
        self.held += max(0.0, until - max(self.hold_until, now))
        self.hold_until = until


def running(data_dir: Path) -> bool:
    """True when a sender holds ``data_dir``'s sender lock."""
    path = Path(data_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # (closing drops the shared lock if we got it)
    return False


def _take_lock(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    # ``running`` (``/healthz``, a worker's check) holds a shared lock for an instant: try for a second
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SystemExit(f"sophon sender: another sender is already running for {data_dir} "
                                 f"(it holds {data_dir / LOCK_NAME}); not starting a second one") from None
            time.sleep(0.01)


def lower_priority(nice: str) -> str:
    """Lower this process's CPU priority; call it before the process starts threads (they
    inherit it: Linux applies both the policy and the nice value per thread).

    :param nice: ``idle`` (``SCHED_IDLE``; nice +19 where the system has no such policy)
        or a nice increment ``0`` to ``19``, as ``Settings.sender_nice`` holds it.
    :return: what was applied, for the log.
    """
    if nice == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except (AttributeError, OSError) as exc:
            log.warning("cannot run the reply sender under SCHED_IDLE (%s); lowering it to nice +19 instead", exc)
            nice = "19"
    if int(nice):
        os.nice(int(nice))
    return f"nice +{int(nice)}"


def _listen(sock: socket.socket, pipeline, stop: threading.Event, gate: LoadGate | None) -> None:
    while not stop.is_set():
        try:
            data = sock.recv(4096)
        except OSError:
            if stop.is_set():
                return
            continue
        if gate is not None and data.startswith(b"load "):
            try:
                _, pid, share = data.split()
                gate.report(int(pid), float(share))
            except ValueError:
                pass
            pipeline.hold_until = gate.hold_until
        if data:
            pipeline.wake()


def main(argv: list[str] | None = None) -> int:
    from . import logs
    from .app import secrets_of
    from .errors import SophonError
    from .runtime import Runtime
    from .settings import Settings, sender_nice

    ap = argparse.ArgumentParser(prog="python -m sophon_core.sender", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None,
                    help="runner threads (default SOPHON_PIPELINE_THREADS x SOPHON_WORKERS)")
    ap.add_argument("--nice", default=None, help=f"CPU priority: 0 to 19, the niceness to add, or idle "
                    f"(SCHED_IDLE) (default SOPHON_SENDER_NICE or {DEFAULT_NICE}; 0 keeps the parent's)")
    args = ap.parse_args(argv)
    built: list = []
    logs.configure(lambda: secrets_of(built[0]) if built else [])
    parent = os.getppid()
    settings = Settings.from_env()
    threads = args.threads or settings.pipeline_threads * max(1, int(settings.env.get("SOPHON_WORKERS") or 1))
    settings = dataclasses.replace(settings, pipeline_threads=max(1, threads), replies="workers")
    try:
        nice = sender_nice(args.nice, "--nice") if args.nice is not None else settings.sender_nice
    except ValueError as exc:
        ap.error(str(exc))
    priority = lower_priority(nice)  # before any thread starts, and before the lock says it runs
    lock_fd = _take_lock(settings.data_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(wake_address(settings.data_dir))
    except OSError as exc:
        log.warning("cannot listen for wake-ups (%s); finding new jobs by polling the store", exc)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runtime = Runtime.build(settings)
    except SophonError as exc:
        log.error("reply sender cannot start:\n%s", exc)
        return 1
    built.append(runtime)
    runtime.pipeline.start()
    gate = LoadGate(usable_cpus()) if settings.sender_yield else None
    threading.Thread(target=_listen, args=(sock, runtime.pipeline, stop, gate), name="sophon-sender-wake",
                     daemon=True).start()
    log.info("reply sender up: %d runner thread(s), %s, %s, store %s", threads, priority,
             f"yields to busy webhooks ({BUSY_SHARE:.0%} of {gate.cpus:g} CPU(s))" if gate else "never yields",
             settings.data_dir)
    said = (0, -YIELD_LOG_EVERY)
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("the process that started the reply sender is gone; stopping")
            break
        if gate is not None and gate.holds != said[0] and time.monotonic() >= said[1] + YIELD_LOG_EVERY:
            log.info("yielded to the webhooks %d time(s) so far, %.1f s in all: no new reply started while "
                     "the webhook workers used %.0f%% or more of %g CPU(s) (SOPHON_SENDER_YIELD)",
                     gate.holds, gate.held, 100 * BUSY_SHARE, gate.cpus)
            said = (gate.holds, time.monotonic())
    runtime.pipeline.shutdown(wait=True, timeout=STOP_TIMEOUT)
    sock.close()
    os.close(lock_fd)
    log.info("reply sender stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
