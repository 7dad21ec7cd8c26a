"""From an acknowledged inbound message to the agent's reply on the wire.

``Pipeline.accept`` runs inside the webhook request: it stores the message and
its job in one transaction (once per provider message id) and returns. Runner
threads in every worker process claim jobs from the store with a lease, run the
agent, split the reply, and send it part by part. Nothing is lost when a worker
dies: its jobs run again once their lease runs out. A session's jobs run one at
a time, oldest first, across all workers.

Guarantees: an acknowledged message is answered at least once; every part that
Twilio (or any provider) accepted and whose id was recorded is never sent again.
The one window that cannot be closed: a crash after the provider accepted a
part and before its id was recorded makes that part go out twice.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Sequence

from .errors import SendError
from .models import Channel, InboundMessage, OutboundMessage
from .store import Job
from .textsplit import split_text

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime

log = logging.getLogger("sophon.pipeline")

APOLOGY = "Sorry, I couldn't answer that just now. Please try again in a moment."
HISTORY_TURNS = 20
IDLE_POLL = 0.25  # seconds between store polls when there is nothing to do
MAX_BACKOFF = 300.0


def session_key(channel: Channel, msg: InboundMessage) -> str:
    """``main-session``: one session per agent; ``per-peer``: one per sender and channel."""
    agent = channel.routing.agent_id
    if channel.routing.dm_behavior == "per-peer":
        return f"agent:{agent}:peer:{channel.id}:{msg.sender}"
    return f"agent:{agent}:main"


def backoff(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter, never shorter than what the provider asked for."""
    delay = min(MAX_BACKOFF, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.5)
    return max(delay, retry_after or 0.0)


class Pipeline:
    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.abandoned_agent_calls = 0  # agent calls still running after their timeout
        self._guard = threading.Lock()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- in the webhook request ----------------------------------------------------

    def accept(self, channel_type: str, messages: Sequence[InboundMessage]) -> int:
        """Store each message with its job (duplicates by provider id are dropped).

        Before a job is made: senders an allowlist channel does not admit are
        dropped (log line and ``blocked`` counter); opt-out, opt-in and help
        messages are recorded and never answered; a sender over the channel's
        hourly limit is recorded and not answered (``rate_limited`` counter).
        Messages naming a channel that is unknown, disabled or of another type
        are dropped with an error log: a plugin must never route around activation.
        :return: how many messages were queued for an answer.
        """
        store = self.runtime.store
        queued = 0
        for msg in messages:
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
                continue
            key = session_key(channel, msg)
            if msg.intent != "message":
                self._consent(channel, msg, key)
                continue
            hour_ago = time.time() - 3600
            if store.inbound_since(channel.id, msg.sender, hour_ago) >= channel.limits.inbound_per_sender_per_hour:
                if store.record_inbound(msg, key, status="rate-limited") is not None:
                    store.count(channel.id, messages_in=1, units_in=msg.units, rate_limited=1)
                    log.warning("%s sent more than %d messages to %s in an hour "
                                "(limits.inboundPerSenderPerHour); %s not answered", msg.sender,
                                channel.limits.inbound_per_sender_per_hour, channel.id, msg.provider_message_id)
                continue
            if store.accept_inbound(msg, key) is None:
                log.info("duplicate delivery of %s on %s ignored", msg.provider_message_id, channel.id)
                continue
            queued += 1
        if queued:
            self.start()
            with self._wake:
                self._wake.notify(queued)
        return queued

    def _consent(self, channel: Channel, msg: InboundMessage, key: str) -> None:
        store = self.runtime.store
        if store.record_inbound(msg, key, status=msg.intent) is None:
            return  # duplicate delivery
        store.count(channel.id, messages_in=1, units_in=msg.units)
        if msg.intent == "opt_out":
            store.set_opt_out(channel.id, msg.sender, msg.text.strip().upper() or "STOP")
            log.info("%s opted out of %s; nothing will be sent to them", msg.sender, channel.id)
        elif msg.intent == "opt_in":
            store.set_opt_out(channel.id, msg.sender, None)
            log.info("%s opted back in to %s", msg.sender, channel.id)

    # --- runner threads ------------------------------------------------------------

    def start(self) -> None:
        """Start the runner threads of this process (idempotent; call after fork)."""
        with self._guard:
            if self._threads or self._stop.is_set():
                return
            count = self.runtime.settings.pipeline_threads
            self._threads = [threading.Thread(target=self._run, name=f"sophon-runner-{i}", daemon=True)
                             for i in range(count)]
            self._threads.append(threading.Thread(target=self._heartbeat, name="sophon-lease", daemon=True))
            for t in self._threads:
                t.start()

    def shutdown(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Stop claiming; let jobs in progress finish (their leases cover a hard stop)."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if wait:
            deadline = time.monotonic() + timeout
            for t in self._threads:
                t.join(max(0.0, deadline - time.monotonic()))

    def run_pending(self) -> int:
        """Process every job that is due now, in this thread (for tools and tests)."""
        done = 0
        while (job := self.runtime.store.claim(self.owner, self.runtime.settings.job_lease)) is not None:
            self._process(job)
            done += 1
        return done

    def _run(self) -> None:
        store, lease = self.runtime.store, self.runtime.settings.job_lease
        while not self._stop.is_set():
            try:
                job = store.claim(self.owner, lease)
            except Exception:
                log.exception("claiming a job failed; retrying")
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(IDLE_POLL)
                continue
            self._process(job)

    def _heartbeat(self) -> None:
        lease = self.runtime.settings.job_lease
        while not self._stop.wait(lease / 3):
            try:
                self.runtime.store.renew(self.owner, lease)
            except Exception:
                log.exception("renewing job leases failed")

    # --- one job -------------------------------------------------------------------

    def _process(self, job: Job) -> None:
        store = self.runtime.store
        try:
            channel = self.runtime.config.get(job.channel_id)
            if channel is None or not channel.enabled:
                store.fail(job.id, f"channel {job.channel_id!r} is no longer active; reply not sent")
                log.error("job %d: channel %r is no longer active; not answering", job.id, job.channel_id)
                return
            msg = job.message
            if self.runtime.store.opted_out(channel.id, msg.sender):
                (part,) = store.parts(job, [""], msg.sender)
                self._skip(job, part, "recipient opted out; agent not asked", skipped_opted_out=1)
                log.info("not answering %s on %s: they opted out", msg.sender, channel.id)
                return
            reply = job.reply
            if reply is None:
                reply = msg.canned_reply if msg.canned_reply is not None else self._ask_agent(channel, job)
                store.save_reply(job.id, reply)
            self._send_parts(channel, job, reply)
        except Exception as exc:  # a bug, not a provider failure: keep the job for a later try
            log.exception("job %d (%s on %s) failed unexpectedly", job.id, job.message.provider_message_id,
                          job.channel_id)
            self._retry_or_give_up(job, f"internal error: {type(exc).__name__}", None)

    # --- delivery status -----------------------------------------------------------

    def _send_parts(self, channel: Channel, job: Job, reply: str) -> None:
        store, pm, settings = self.runtime.store, self.runtime.pm, self.runtime.settings
        ctype = self.runtime.types[channel.type]
        texts = split_text(reply, ctype.max_text_length) if ctype.max_text_length else [reply]
        peer = job.message.sender
        for part in store.parts(job, texts, peer):
            if part.status not in ("pending", "in-flight"):
                continue  # accepted by the provider before (or failed for good)
            if store.opted_out(channel.id, peer):
                self._skip(job, part, "recipient opted out", skipped_opted_out=1)
                log.info("not answering %s on %s: they opted out", peer, channel.id)
                return
            units = ctype.units(part.text)
            budget = channel.limits.daily_outbound_units
            if store.used_today(channel.id, "units_out") + units > budget:
                self._skip(job, part, f"daily budget of {budget} units reached (limits.dailyOutboundUnits)",
                           skipped_budget=1)
                log.error("channel %s reached its daily budget of %d units; not answering %s",
                          channel.id, budget, peer)
                return
            self._pace(channel, ctype, units)
            if part.status == "in-flight":
                log.warning("job %d part %d may have been sent before a crash; sending it again "
                            "(at-least-once)", job.id, part.part_no)
            store.set_part(part.id, "in-flight")
            try:
                sent = pm.hook.send(channel=channel, message=OutboundMessage(channel.id, peer, part.text),
                                    settings=settings)
            except SendError as exc:
                if exc.recipient_opted_out:
                    store.set_opt_out(channel.id, peer, "STOP (reported by the provider)")
                if exc.permanent:
                    store.set_part(part.id, "failed", error=str(exc))
                    store.skip_unsent(job.id, "an earlier part failed")
                    store.fail(job.id, str(exc))
                    store.count(channel.id, failed=1)
                    log.error("sending to %s on %s failed for good: %s", peer, channel.id, exc)
                    return
                store.set_part(part.id, "pending", error=str(exc))
                self._retry_or_give_up(job, str(exc), exc.retry_after, part_id=part.id)
                return
            if sent is None:
                raise RuntimeError(f"no plugin implements send for channel type {channel.type!r}")
            store.set_part(part.id, sent.status or "sent", provider_id=sent.provider_message_id, units=units)
            store.count(channel.id, messages_out=1, units_out=units)
        store.complete(job.id)
        log.info("replied to %s on %s (job %d)", peer, channel.id, job.id)

    def _skip(self, job: Job, part, reason: str, **counters: int) -> None:
        store = self.runtime.store
        store.set_part(part.id, "skipped", error=reason)
        store.skip_unsent(job.id, reason)
        store.complete(job.id)
        store.count(job.channel_id, **counters)

    def _pace(self, channel: Channel, ctype, units: int) -> None:
        """Wait for this address's next send slot (shared by every worker through the store)."""
        rate = channel.limits.send_rate or ctype.default_send_rate
        if not rate:
            return
        at = self.runtime.store.reserve_send_slot(f"{channel.type}:{channel.address or channel.id}", units, rate)
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)

    def _retry_or_give_up(self, job: Job, error: str, retry_after: float | None,
                          part_id: int | None = None) -> None:
        settings, store = self.runtime.settings, self.runtime.store
        delay = backoff(job.attempts, settings.retry_base, retry_after)
        if time.time() + delay - job.created_at > settings.retry_for:
            reason = f"gave up after {job.attempts} attempt(s) over {settings.retry_for:g} s: {error}"
            if part_id is not None:
                store.set_part(part_id, "failed", error=reason)
            store.skip_unsent(job.id, "an earlier part failed")
            store.fail(job.id, reason)
            log.error("job %d: %s", job.id, reason)
            return
        store.retry_later(job.id, time.time() + delay, error)
        log.warning("job %d: %s; trying again in %.1f s (attempt %d)", job.id, error, delay, job.attempts)

    def _ask_agent(self, channel: Channel, job: Job) -> str:
        msg = job.message
        agent = self.runtime.agents.get(channel.routing.agent_id)
        if agent is None:
            log.error("channel %s routes to agent %r, which is not installed; apologizing",
                      channel.id, channel.routing.agent_id)
            return APOLOGY
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
            return APOLOGY
        if "error" in outcome:
            exc = outcome["error"]
            log.error("agent %r raised %s on %s; apologizing", agent.id, type(exc).__name__,
                      msg.provider_message_id, exc_info=exc)
            return APOLOGY
        reply = outcome.get("reply")
        if not isinstance(reply, str) or not reply.strip():
            log.error("agent %r returned %s instead of text on %s; apologizing", agent.id,
                      "empty text" if isinstance(reply, str) else type(reply).__name__,
                      msg.provider_message_id)
            return APOLOGY
        return reply


# How far along a provider message is; a status only ever moves to a higher rank.
STATUS_RANK = {
    "pending": 0, "in-flight": 1, "accepted": 2, "scheduled": 2, "queued": 3, "sending": 4,
    "sent": 5, "delivered": 6, "undelivered": 6, "failed": 6, "canceled": 6, "read": 7,
}


def record_delivery_status(runtime: "Runtime", provider_id: str, status: str, error: str | None) -> bool:
    """Apply a provider's delivery report (e.g. Twilio's StatusCallback); forward only.

    :return: False for an unknown message or a report older than what is known.
    """
    return runtime.store.record_status(provider_id, status, error, STATUS_RANK)
