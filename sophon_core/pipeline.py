"""From an acknowledged inbound message to the agent's reply on the wire.

``Pipeline.accept`` runs inside the webhook request: it appends the message to
the worker's journal, synced, and returns; the worker's mover thread then stores
the message and its job in one transaction (once per provider message id),
batched with the other messages journaled meanwhile (ack_journal.py). With
``SOPHON_ACK_JOURNAL=off`` (or ``SOPHON_SQLITE_SYNC=NORMAL``) the request stores
them itself, in a group commit with the requests under way. Runner
threads claim jobs from the store with a lease, run the agent, split the reply,
and send it part by part; they run in the reply sender process under ``sophon
serve`` (``SOPHON_REPLIES=sender``, see sender.py), else in every worker process.
Nothing is lost when a process dies: its jobs run again once their lease runs
out. A session's jobs run one at a time, oldest first, across all processes.

Guarantees: an acknowledged message is answered at least once; every part that
Twilio (or any provider) accepted and whose id was recorded is never sent again.
The one window that cannot be closed: a crash after the provider accepted a
part and before its id was recorded makes that part go out twice.

Durability (``SOPHON_SQLITE_SYNC=FULL``, the default): the message is on disk
before the 200 (in the journal; with the journal off, its transaction, message
and job, in the store), and so are consent changes: SQLite commits without an fsync and the store fsyncs the write-ahead
log right after, outside the write lock (``Store._await_sync``); a runner is
handed a job only once its message is on disk too. The runners' bookkeeping
(claim, parts and reply, pacing slot, the part's start, its provider id, the
job's end, lease renewals) is committed without waiting for an fsync:
consistent, and safe against the crash of a process or of every process (the
commits are in the OS's hands), but not fsynced by itself; it reaches the
disk with the next fsync of the log by any worker (each acknowledgement's
fsync covers the whole log before it) and at the latest ``SYNC_EVERY`` (1 s)
later, from the heartbeat thread. A power cut or an OS crash
can therefore roll the store back to a consistent point up to about a second
old, never to before an acknowledged message. What it rolls back is redone
after the restart: the job runs again, so a part the provider accepted in that
last second goes out a second time (the window above, widened to about a
second on power loss only), and a reply whose saving was rolled back is asked
of the agent again, so the second copy may be worded differently. Nothing is
lost, and no acknowledged message is stored twice.
"""
from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from . import metrics, sender
from .errors import AttachmentError, SendError
from .media import public_base
from .models import Attachment, Channel, DroppedAttachment, InboundMessage, OutboundMessage, Reply
from .ack_journal import JournalMover
from .store import KEEP_KEYS_SECONDS, Job, LeaseLost
from .textsplit import split_text

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime

log = logging.getLogger("sophon.pipeline")

APOLOGY = "Sorry, I couldn't answer that just now. Please try again in a moment."
HISTORY_TURNS = 20
IDLE_POLL = 0.25  # seconds between store polls when there is nothing to do
MAX_BACKOFF = 300.0
PRUNE_EVERY = 3600.0  # seconds between sweeps of old media files and old webhook keys
SENDER_CHECK_EVERY = 60.0  # seconds between checks that a reply sender runs (SOPHON_REPLIES=sender)
SYNC_EVERY = 1.0  # seconds: the runners' relaxed commits (no fsync of their own) reach the disk this often


def session_key(channel: Channel, msg: InboundMessage) -> str:
    return session_for(channel, msg.sender)


def session_for(channel: Channel, peer: str) -> str:
    """``main-session``: one session per agent; ``per-peer``: one per sender and channel."""
    agent = channel.routing.agent_id
    if channel.routing.dm_behavior == "per-peer":
        return peer_session(agent, channel.id, peer)
    return f"agent:{agent}:main"


def peer_session(agent_id: str, channel_id: str, peer: str) -> str:
    """The session key of one sender on one channel (``dmBehavior: per-peer``)."""
    return f"agent:{agent_id}:peer:{channel_id}:{peer}"


def backoff(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter, never shorter than what the provider asked for."""
    delay = min(MAX_BACKOFF, base * 2 ** max(0, attempt - 1) * random.uniform(0.5, 1.5))
    return max(delay, retry_after or 0.0)


class Pipeline:
    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._pid = os.getpid()
        self._active: dict[int, tuple[Job, float]] = {}  # jobs in hand, for the heartbeat
        self.abandoned_agent_calls = 0  # agent calls still running after their timeout
        self._guard = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sender_checked_at = -SENDER_CHECK_EVERY
        # webhook worker (SOPHON_REPLIES=sender): where its last CPU report to the sender began
        self._load_at, self._load_cpu = time.monotonic(), time.process_time()
        self._load_lock = threading.Lock()
        # reply sender: no new job is claimed before this (time.monotonic()) while it yields to
        # busy webhooks (set by its listening thread from sender.LoadGate)
        self.hold_until = 0.0
        if runtime.settings.replies == "sender":
            # one wake-up of the reply sender per group commit that queued a job (Store._lead)
            runtime.store.on_queued = self._notify_sender
        settings = runtime.settings
        # the workers' journals (ack_journal.py): this process's, when webhooks go through one
        # (``mover``), and those of processes that died, moved even with the journal off now
        self._journals = JournalMover(settings.data_dir / "journal", runtime.store, self._report, self._queued)
        self.mover = self._journals if settings.ack_journal and settings.sqlite_synchronous == "FULL" else None

    # --- in the webhook request ----------------------------------------------------

    def accept(self, channel_type: str, messages: Sequence[InboundMessage],
               delivery_key: str | None = None) -> int:
        """Acknowledge a webhook's messages: journal them (or, with the journal off, store
        each with its job); on disk when this returns.

        Before that: senders an allowlist channel does not admit are dropped (log line and
        ``blocked`` counter); opt-out, opt-in and help messages are recorded in the store
        and never answered. Messages naming a channel that is unknown, disabled or of
        another type are dropped with an error log: a plugin must never route around
        activation. Then, in the store (the mover's batch, or this request's): duplicates
        by provider id are dropped; a sender over the channel's hourly limit is recorded
        and not answered (``rate_limited`` counter); each other message gets its job
        (``_report``: counters and log lines).
        ``delivery_key`` (the provider's idempotency key of this webhook delivery) is
        recorded in the same transaction as the message it brought (``key#n`` for its
        n-th message after the first); a delivery seen before is not accepted again.
        :return: how many messages were journaled, or (journal off) queued for an answer.
        """
        store = self.runtime.store
        queued, journal = 0, []
        for n, msg in enumerate(messages):
            # one key per message of the delivery (the same delivery again brings them in the same order)
            key = (delivery_key if n == 0 else f"{delivery_key}#{n}") if delivery_key else None
            channel = self.runtime.config.get(msg.channel_id)
            if channel is None or channel.type != channel_type or not channel.enabled:
                log.error("plugin for %r returned message %s for channel %r, which is not an active "
                          "%s channel; dropped", channel_type, msg.provider_message_id,
                          msg.channel_id, channel_type)
                continue
            if not channel.admits(msg.sender):
                log.warning("%s is not on the allowlist of channel %s; message %s not answered",
                            msg.sender, channel.id, msg.provider_message_id)
                store.count(channel.id, blocked=1)
                metrics.labelled(metrics.INBOUND, channel.id, "blocked").inc()
                continue
            session = session_key(channel, msg)
            if msg.intent != "message":
                metrics.labelled(metrics.INBOUND, channel.id, "consent").inc()
                if store.record_consent(msg, session, delivery_key=key) and msg.intent in ("opt_out", "opt_in"):
                    log.info("%s opted %s on %s", msg.sender, "out" if msg.intent == "opt_out" else "back in",
                             channel.id)
                continue
            limit = channel.limits.inbound_per_sender_per_hour
            if self.mover is not None:
                journal.append((msg, session, limit, key))
                continue
            outcome, _ = store.accept_inbound(msg, session, limit, delivery_key=key)
            self._report(msg, outcome, limit)
            queued += outcome == "queued"
        if journal:
            self.start()  # (the mover: started at boot already, see app.py)
            self.mover.append(journal)
            return len(journal)
        if queued:
            self.start()  # (under a reply sender: the checkpoint thread; started at boot already)
            if self.runtime.settings.replies != "sender":  # (the store wakes the sender: on_queued)
                self._queued(queued)
        return queued

    def settle(self) -> None:
        """Move what this process journaled into the store now (what the mover thread does
        within ``ack_journal.MOVE_EVERY``): for tests and tools that read the store right
        after a webhook."""
        if self.mover is not None:
            self.mover.settle()

    def _report(self, msg: InboundMessage, outcome: str, limit: int | None, replayed: bool = False) -> None:
        """Count and log what the store did with an acknowledged message (``replayed``: moved
        from a dead worker's journal, where a duplicate is one the worker had moved)."""
        if replayed and outcome == "duplicate":
            return
        metrics.labelled(metrics.INBOUND, msg.channel_id, outcome.replace("-", "_")).inc()
        if outcome == "duplicate":
            log.info("duplicate delivery of %s on %s ignored", msg.provider_message_id, msg.channel_id)
        elif outcome == "rate-limited":
            log.warning("%s sent more than %d messages to %s in an hour (limits.inboundPerSenderPerHour);"
                        " %s not answered", msg.sender, limit, msg.channel_id, msg.provider_message_id)

    def _queued(self, jobs: int) -> None:
        """``jobs`` new jobs are in the store: wake as many runners (or the reply sender)."""
        if self.runtime.settings.replies == "sender":  # (a journal's move; the store's group commits: on_queued)
            self._notify_sender()
            return
        with self._wake:
            self._wake.notify(jobs)

    def _notify_sender(self) -> None:
        """Wake the reply sender (``SOPHON_REPLIES=sender``), with this worker's CPU share
        since the last report every ``sender.LOAD_WINDOW`` or more (for its ``LoadGate``);
        say so now and then if no sender runs."""
        data_dir = self.runtime.settings.data_dir
        now, share = time.monotonic(), None
        if now - self._load_at >= sender.LOAD_WINDOW:
            with self._load_lock:  # (two batches' leaders may get here at once)
                if now - self._load_at >= sender.LOAD_WINDOW:
                    cpu = time.process_time()
                    share = max(0.0, cpu - self._load_cpu) / (now - self._load_at)
                    self._load_at, self._load_cpu = now, cpu
        sender.notify(data_dir, share)
        if now - self._sender_checked_at >= SENDER_CHECK_EVERY:
            self._sender_checked_at = now
            if not sender.running(data_dir):
                log.warning("SOPHON_REPLIES=sender, but no reply sender is running for %s: messages are stored "
                            "and wait for it (`sophon serve` starts one; under plain gunicorn leave "
                            "SOPHON_REPLIES unset)", data_dir)

    def wake(self) -> None:
        """New jobs may be waiting (the reply sender's wake-up): stop waiting, claim."""
        with self._wake:
            self._wake.notify_all()

    # --- runner threads ------------------------------------------------------------

    def start(self) -> None:
        """Start this process's runner threads (idempotent; safe after fork or --preload); under
        ``SOPHON_REPLIES=sender``, where the reply sender process runs them, only a checkpoint thread."""
        if self._threads and self._pid == os.getpid():  # running (the usual case, once per webhook)
            return
        with self._guard:
            if self._pid != os.getpid():  # forked (gunicorn --preload): threads did not come along
                self._pid, self._threads, self._active = os.getpid(), [], {}
                self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            if self._threads or self._stop.is_set():
                return
            if self.runtime.settings.replies == "sender":
                # the reply sender process runs the runners (sender.py); this process only
                # checkpoints the store's log, at its own priority
                self._threads = [threading.Thread(target=self._closing(self._checkpointer), name="sophon-checkpoint",
                                                  daemon=True)]
            else:
                count = self.runtime.settings.pipeline_threads
                self._threads = [threading.Thread(target=self._closing(self._run), name=f"sophon-runner-{i}",
                                                  daemon=True)
                                 for i in range(count)]
                self._threads.append(threading.Thread(target=self._closing(self._heartbeat), name="sophon-lease",
                                                      daemon=True))
            if self.mover is not None or self._journals.folder.is_dir():  # (also moves dead workers' journals)
                self._threads.append(threading.Thread(target=self._closing(self._journals.run, self._stop),
                                                      name="sophon-journal", daemon=True))
            for t in self._threads:
                t.start()
            atexit.register(self.shutdown)  # gunicorn's graceful stop: finish what is in hand

    def _closing(self, target, *args):
        """``target(*args)``, then this thread's store connection closed (a thread's own, see
        ``Store._conn``: closed when the thread ends, not when the store is collected)."""
        def main() -> None:
            try:
                target(*args)
            finally:
                self.runtime.store.close_this_thread()
        return main

    def shutdown(self, wait: bool = True, timeout: float = 20.0) -> None:
        """Stop claiming; let jobs in hand finish (their leases cover a hard stop); move what
        is journaled into the store (what cannot be is left for the next process)."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        self._journals.kick()
        if wait:
            deadline = time.monotonic() + timeout
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(max(0.0, deadline - time.monotonic()))
            self._journals.close()  # (the mover thread did, unless it never ran)
            self.runtime.store.sync_relaxed()

    def _run(self) -> None:
        store, lease = self.runtime.store, self.runtime.settings.job_lease
        while not self._stop.is_set():
            try:
                store.relax_this_thread()  # reply bookkeeping: no fsync per commit (see the module docstring)
                self.runtime.reload_if_changed()
                held = self.hold_until - time.monotonic()
                if held > 0:  # the reply sender yields to busy webhooks (sender.LoadGate)
                    self._stop.wait(held)
                    continue
                job = store.claim(self.owner, lease)
                if job is None:
                    with self._wake:
                        self._wake.wait(self._idle_wait(store))
                    continue
                self._work(job)
            except Exception:  # the store failed (disk full, locked): never let the runner die
                log.exception("runner error; going on in %.1f s", IDLE_POLL)
                self._stop.wait(IDLE_POLL)

    @staticmethod
    def _idle_wait(store) -> float:
        """How long a runner that found nothing to claim waits (unless woken): until the
        earliest queued job is due, when that is sooner than ``IDLE_POLL`` (a journaled
        message's job is held ``ack_journal.ORDER_HOLD`` after its acknowledgement, and
        nothing wakes the runners when the hold ends). A job due already is held back by
        its session's running one: it waits for the poll, or for that job's end."""
        due = store.next_due()
        ahead = IDLE_POLL if due is None else due - time.time()
        return ahead if 0 < ahead < IDLE_POLL else IDLE_POLL

    def _work(self, job: Job) -> None:
        """Process one claimed job; the heartbeat renews its lease meanwhile."""
        with self._guard:
            self._active[job.id] = (job, time.monotonic())
        try:
            self._process(job)
        except LeaseLost as exc:
            log.warning("%s; leaving it to that runner", exc)
        finally:
            with self._guard:
                self._active.pop(job.id, None)

    def _heartbeat(self) -> None:
        settings, store = self.runtime.settings, self.runtime.store
        lease = settings.job_lease
        # A job is renewed while its runner works on it, up to a cap: a runner stuck
        # longer than any agent timeout plus a retry window is presumed dead.
        cap = settings.agent_timeout + MAX_BACKOFF + 600
        renew_at = time.monotonic() + lease / 3
        prune_at = time.monotonic() + 60  # first sweep a minute after start, then hourly
        while not self._stop.wait(min(SYNC_EVERY, lease / 3)):
            try:
                store.relax_this_thread()
                store.sync_relaxed()  # bounds what a power cut can roll back (module docstring)
                store.checkpoint()  # so that no webhook's commit has to (Store._conn)
            except Exception:
                log.exception("syncing the store failed")
            if time.monotonic() >= prune_at:
                prune_at = time.monotonic() + PRUNE_EVERY
                self._prune_media()
                self._prune_store()
            if time.monotonic() < renew_at:
                continue
            renew_at = time.monotonic() + lease / 3
            with self._guard:
                now = time.monotonic()
                jobs = [job for job, since in self._active.values() if now - since < cap]
            if not jobs:
                continue
            try:
                lost = store.renew(jobs, lease)
                if lost:
                    log.error("lost the lease of job(s) %s to another runner", lost)
            except Exception:
                log.exception("renewing job leases failed")

    def _checkpointer(self) -> None:
        """Under ``SOPHON_REPLIES=sender``, in each webhook worker: checkpoint the store every
        second (the sender does too, but at a lower priority it may be starved under load, and
        a commit would then checkpoint a long log itself, in the write lock)."""
        while not self._stop.wait(SYNC_EVERY):
            try:
                self.runtime.store.checkpoint()
            except Exception:
                log.exception("checkpointing the store failed")

    def _prune_media(self) -> int:
        """Delete kept files older than ``SOPHON_MEDIA_RETENTION_DAYS`` (any worker may; it is idempotent)."""
        try:
            gone = self.runtime.media.prune(self.runtime.settings.media_retention_days * 86400)
        except OSError:
            log.exception("pruning old files under %s failed", self.runtime.media.root)
            return 0
        if gone:
            log.info("deleted %d file(s) older than %g day(s) (SOPHON_MEDIA_RETENTION_DAYS)", gone,
                     self.runtime.settings.media_retention_days)
        return gone

    def _prune_store(self) -> dict[str, int]:
        """Forget old inbound message ids, webhook keys and unmatched delivery reports (``Store.prune``)."""
        try:
            gone = self.runtime.store.prune()
        except Exception:
            log.exception("pruning old webhook keys from the store failed")
            return {}
        if any(gone.values()):
            log.info("forgot %d inbound message id(s), %d webhook key(s) and %d unmatched delivery report(s)"
                     " older than %g day(s)", gone["inbound_ids"], gone["deliveries"], gone["early_status"],
                     KEEP_KEYS_SECONDS / 86400)
        return gone

    # --- one job -------------------------------------------------------------------

    def _process(self, job: Job) -> None:
        store = self.runtime.store
        try:
            channel = self.runtime.config.get(job.channel_id)
            if channel is None or not channel.enabled:
                # activated in the last second (another process accepted the message)? look again now
                self.runtime.reload_if_changed(every=0)
                channel = self.runtime.config.get(job.channel_id)
            if channel is None or not channel.enabled:
                store.fail(job, f"channel {job.channel_id!r} is no longer active; reply not sent")
                log.error("job %d: channel %r is no longer active; not answering", job.id, job.channel_id)
                return
            msg = job.message
            if store.opted_out(channel.id, msg.sender):
                store.skip_job(job, "recipient opted out", "skipped_opted_out")
                log.info("not answering %s on %s: they opted out", msg.sender, channel.id)
                return
            if job.reply is None:  # first attempt: make the reply; its parts are saved with it
                answer = Reply(msg.canned_reply) if msg.canned_reply is not None else self._ask_agent(channel, job)
                self._send_parts(channel, job, answer.text, save_reply=True, attachments=answer.attachments)
            else:
                self._send_parts(channel, job, job.reply)
        except LeaseLost:
            raise
        except Exception as exc:  # a bug or a store failure, not a provider failure: try later
            log.exception("job %d (%s on %s) failed unexpectedly", job.id, job.message.provider_message_id,
                          job.channel_id)
            self._retry_or_give_up(job, f"internal error: {type(exc).__name__}", None)

    def _send_parts(self, channel: Channel, job: Job, reply: str, save_reply: bool = False,
                    attachments: Sequence[Attachment] = ()) -> None:
        """Send the reply's parts in order; ``save_reply``: store the reply (and copies of
        its ``attachments``) with the parts."""
        store, pm, settings = self.runtime.store, self.runtime.pm, self.runtime.settings
        ctype = self.runtime.types[channel.type]
        files = self._keep_attachments(channel, ctype, attachments) if save_reply else []
        if save_reply and attachments and not files and not reply.strip():
            reply = APOLOGY  # the reply was only files, and none can go out
        texts = split_text(reply, ctype.max_text_length) if ctype.max_text_length and reply else [reply]
        texts, media = layout(texts, files, ctype.max_attachments)
        peer = job.message.sender
        address = pacing_address(channel)
        parts = store.parts(job, texts, peer, reply=reply if save_reply else None, media=media)
        finished = False
        for part in parts:
            if part.status not in ("pending", "in-flight"):
                continue  # accepted by the provider before (or failed for good)
            units = ctype.units(part.text)
            pace(store, channel, ctype, units)
            verdict = store.begin_part(job, part, units, channel.limits.daily_outbound_units)
            if verdict == "opted_out":
                store.skip_job(job, "recipient opted out", "skipped_opted_out")
                metrics.labelled(metrics.SKIPPED, channel.id, "opted_out").inc()
                log.info("not answering %s on %s: they opted out", peer, channel.id)
                return
            if verdict == "over_budget":
                budget = channel.limits.daily_outbound_units
                store.skip_job(job, f"daily budget of {budget} units reached (limits.dailyOutboundUnits)",
                               "skipped_budget")
                metrics.labelled(metrics.SKIPPED, channel.id, "over_budget").inc()
                log.error("channel %s reached its daily budget of %d units; not answering %s",
                          channel.id, budget, peer)
                return
            if part.status == "in-flight":
                log.warning("job %d part %d may have been sent before a crash; sending it again "
                            "(at-least-once)", job.id, part.part_no)
            try:
                message = OutboundMessage(channel.id, peer, part.text,
                                          attachments=self._signed(channel, ctype, part.media))
                sent = pm.hook.send(channel=channel, message=message, settings=settings)
                if sent is None:
                    raise RuntimeError(f"no plugin implements send for channel type {channel.type!r}")
            except SendError as exc:
                self._send_failed(channel, job, part, units, exc, address)
                return
            except Exception:
                store.part_unsent(job, part, units, "internal error", status="in-flight")
                raise
            # The last part's id and the job's end are one transaction.
            finished = self._record_sent(job, part, sent, finish=part is parts[-1])
            metrics.labelled(metrics.OUTBOUND, channel.id).inc()
            metrics.labelled(metrics.OUTBOUND_UNITS, channel.id).inc(units)
        if not finished:
            store.complete(job)  # the last part went out before (a retry after a crash), or no part did
        log.info("replied to %s on %s (job %d)", peer, channel.id, job.id)

    def _record_sent(self, job: Job, part, sent, finish: bool = False) -> bool:
        """The provider took the part: its id must reach the store, or a retry would resend it.

        :param finish: the job's last part: end the job in the same transaction.
        :return: True when the job was ended here.
        :raises LeaseLost: ``finish`` and another runner has the job (the part is recorded).
        """
        for attempt in range(6):
            try:
                ours = self.runtime.store.part_sent(job, part, sent.provider_message_id, sent.status or "sent",
                                                    finish=finish)
                break
            except Exception:
                if attempt == 5:
                    raise
                log.exception("recording %s failed; trying again", sent.provider_message_id)
                time.sleep(0.5 * 2 ** attempt)
        if not ours:
            raise LeaseLost(f"job {job.id} was claimed by another runner")
        return finish

    def _send_failed(self, channel: Channel, job: Job, part, units: int, exc: SendError, address: str) -> None:
        store, peer = self.runtime.store, job.message.sender
        metrics.labelled(metrics.SEND_FAILURES, channel.id, "permanent" if exc.permanent else "temporary").inc()
        if exc.recipient_opted_out:
            store.set_opt_out(channel.id, peer, "STOP (reported by the provider)")
        if exc.permanent:
            store.part_unsent(job, part, units, str(exc), status="failed")
            store.fail(job, str(exc))
            store.count(channel.id, failed=1)
            log.error("sending to %s on %s failed for good: %s", peer, channel.id, exc)
            return
        store.part_unsent(job, part, units, str(exc), status="in-flight" if exc.ambiguous else "pending")
        if exc.retry_after:
            store.defer_address(address, time.time() + exc.retry_after)
        self._retry_or_give_up(job, str(exc), exc.retry_after)

    def _retry_or_give_up(self, job: Job, error: str, retry_after: float | None) -> None:
        settings, store = self.runtime.settings, self.runtime.store
        now = time.time()
        deadline = (job.first_failure_at or now) + settings.retry_for
        if now >= deadline:
            reason = f"gave up after {job.attempts} attempt(s) over {settings.retry_for:g} s: {error}"
            store.fail(job, reason)
            store.count(job.channel_id, failed=1)
            metrics.labelled(metrics.SKIPPED, job.channel_id, "gave_up").inc()
            log.error("job %d: %s", job.id, reason)
            return
        delay = min(backoff(job.attempts, settings.retry_base, retry_after), deadline - now)
        store.retry_later(job, now + delay, error)
        log.warning("job %d: %s; trying again in %.1f s (attempt %d)", job.id, error, delay, job.attempts)

    def _ask_agent(self, channel: Channel, job: Job) -> Reply:
        agent = self.runtime.agents.get(channel.routing.agent_id)
        if agent is None:
            log.error("channel %s routes to agent %r, which is not installed; apologizing",
                      channel.id, channel.routing.agent_id)
            return Reply(APOLOGY)
        msg = self._fetch_attachments(channel, job.message)
        history = self.runtime.store.history(job.session_key, current_id=job.inbound_id, limit=HISTORY_TURNS)
        timeout = self.runtime.settings.agent_timeout
        outcome: dict = {}
        done = threading.Event()

        def call() -> None:
            try:
                outcome["reply"] = agent.reply(msg, history)
            except BaseException as exc:  # reported below, in the runner's thread
                outcome["error"] = exc
            finally:
                done.set()

        # A thread of its own: a hung agent costs one thread, never the pipeline's capacity,
        # and the timeout counts from the moment the agent starts.
        threading.Thread(target=call, name=f"sophon-agent-{agent.id}", daemon=True).start()
        if not done.wait(timeout):
            with self._guard:
                self.abandoned_agent_calls += 1
                abandoned = self.abandoned_agent_calls
            log.error("agent %r took longer than %g s (SOPHON_AGENT_TIMEOUT) on %s; apologizing "
                      "(%d agent call(s) abandoned so far)", agent.id, timeout,
                      msg.provider_message_id, abandoned)
            return Reply(APOLOGY)
        if "error" in outcome:
            exc = outcome["error"]
            log.error("agent %r raised %s on %s; apologizing", agent.id, type(exc).__name__,
                      msg.provider_message_id, exc_info=exc)
            return Reply(APOLOGY)
        reply = outcome.get("reply")
        if isinstance(reply, str):
            reply = Reply(reply)
        if (not isinstance(reply, Reply) or not isinstance(reply.text, str)
                or not all(isinstance(a, Attachment) for a in reply.attachments)
                or not (reply.text.strip() or reply.attachments)):
            log.error("agent %r returned %s instead of text or a Reply on %s; apologizing", agent.id,
                      "an empty reply" if isinstance(reply, Reply) else type(reply).__name__,
                      msg.provider_message_id)
            return Reply(APOLOGY)
        return reply

    # --- files ---------------------------------------------------------------------

    def _fetch_attachments(self, channel: Channel, msg: InboundMessage) -> InboundMessage:
        """The message as the agent sees it: each attached file fetched (``path`` set), or
        moved to ``dropped_attachments`` with the reason."""
        if not msg.attachments:
            return msg
        got, dropped = [], list(msg.dropped_attachments)
        for n, att in enumerate(msg.attachments):
            try:
                data = self.runtime.pm.hook.fetch_attachment(channel=channel, attachment=att,
                                                             settings=self.runtime.settings)
                if data is None:
                    raise AttachmentError(f"no installed plugin fetches files for channel type {channel.type!r}")
                path = self.runtime.media.keep_inbound(channel.id, msg.provider_message_id, n, data,
                                                       att.content_type)
                got.append(replace(att, path=str(path), size=len(data)))
            except AttachmentError as exc:
                log.warning("file %d (%s) of %s on %s not handed to the agent: %s", n + 1, att.content_type,
                            msg.provider_message_id, channel.id, exc)
                dropped.append(DroppedAttachment(att.content_type, str(exc)))
            except Exception:
                log.exception("fetching file %d of %s on %s failed", n + 1, msg.provider_message_id, channel.id)
                dropped.append(DroppedAttachment(att.content_type, "could not be fetched (internal error)"))
        return replace(msg, attachments=tuple(got), dropped_attachments=tuple(dropped))

    def _keep_attachments(self, channel: Channel, ctype, attachments: Sequence[Attachment]) -> list[dict]:
        """Copies of the agent's files, kept for the provider to fetch; [] when they cannot go out."""
        if not attachments:
            return []
        if not ctype.max_attachments:
            log.warning("the reply on %s has %d file(s), but %s sends text only; files not sent",
                        channel.id, len(attachments), ctype.display_name)
            return []
        if public_base(channel, ctype, self.runtime.settings) is None:
            log.error("the reply on %s has %d file(s), but the provider could not fetch them: set "
                      "SOPHON_PUBLIC_URL%s to the URL it reaches this server at; files not sent", channel.id,
                      len(attachments), f" (or config.{ctype.public_url_field})" if ctype.public_url_field else "")
            return []
        kept = []
        for att in attachments:
            try:
                kept.append(self.runtime.media.keep_outbound(att))
            except (OSError, ValueError) as exc:
                log.error("a file of the reply on %s cannot be read (%s); not sent", channel.id, exc)
        return kept

    def _signed(self, channel: Channel, ctype, media: Sequence[dict]) -> tuple[Attachment, ...]:
        """A part's files with a fresh signed URL each (the provider fetches them now)."""
        base = public_base(channel, ctype, self.runtime.settings) if media else None
        if not base:
            return ()
        return tuple(Attachment(m["content_type"], url=self.runtime.media.signed_url(base, m["id"]),
                                filename=m.get("filename"), size=m.get("size")) for m in media)


def layout(texts: Sequence[str], files: Sequence[dict], per_message: int) -> tuple[list[str], list[list[dict]]]:
    """Which files go with which part: the first parts carry up to ``per_message`` files
    each; files left over go out as file-only parts after the text.

    :return: the parts' texts (file-only parts have ``""``) and, per part, its files.
    """
    texts = [t for t in texts if t] or [""]
    if not files or per_message < 1:
        return texts, [[] for _ in texts]
    chunks = [list(files[i:i + per_message]) for i in range(0, len(files), per_message)]
    texts = texts + [""] * max(0, len(chunks) - len(texts))
    return texts, [chunks[i] if i < len(chunks) else [] for i in range(len(texts))]


def pacing_address(channel: Channel) -> str:
    """What a send rate applies to: the channel's address (its number), per type."""
    return f"{channel.type}:{channel.address or channel.id}"


def pace(store, channel: Channel, ctype, units: int) -> None:
    """Wait for the channel's address's next send slot, shared by every process through the store
    (``limits.sendRate``, else the type's default; no rate: no wait)."""
    rate = channel.limits.send_rate or ctype.default_send_rate
    if not rate:
        return
    delay = store.reserve_send_slot(pacing_address(channel), units, rate) - time.time()
    if delay > 0:
        time.sleep(delay)


# How far along a provider message is; a status only ever moves to a higher rank.
STATUS_RANK = {
    "pending": 0, "in-flight": 1, "accepted": 2, "scheduled": 2, "queued": 3, "sending": 4,
    "sent": 5, "delivered": 6, "undelivered": 6, "failed": 6, "canceled": 6, "read": 7,
}


def record_delivery_status(runtime: "Runtime", channel_id: str, provider_id: str, status: str,
                           error: str | None) -> bool:
    """Apply a provider's delivery report (e.g. Twilio's StatusCallback) for one of the
    channel's messages; forward only (``read`` only after ``delivered``). A report that
    arrives before the message's id is recorded is kept and applied then.

    :return: False when the report changes nothing (yet).
    """
    metrics.labelled(metrics.DELIVERY_REPORTS, channel_id, status).inc()
    return runtime.store.record_status(channel_id, provider_id, status, error, STATUS_RANK)
