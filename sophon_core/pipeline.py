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

        Messages naming a channel that is unknown, disabled or of another type
        are dropped with an error log: a plugin must never route around activation.
        :return: how many messages were queued.
        """
        queued = 0
        for msg in messages:
            channel = self.runtime.config.get(msg.channel_id)
            if channel is None or channel.type != channel_type or not channel.enabled:
                log.error("plugin for %r returned message %s for channel %r, which is not an active "
                          "%s channel; dropped", channel_type, msg.provider_message_id,
                          msg.channel_id, channel_type)
                continue
            if self.runtime.store.accept_inbound(msg, session_key(channel, msg)) is None:
                log.info("duplicate delivery of %s on %s ignored", msg.provider_message_id, channel.id)
                continue
            queued += 1
        if queued:
            self.start()
            with self._wake:
                self._wake.notify(queued)
        return queued

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
            reply = job.reply
            if reply is None:
                reply = msg.canned_reply if msg.canned_reply is not None else self._ask_agent(channel, job)
                store.save_reply(job.id, reply)
            self._send_parts(channel, job, reply)
        except Exception as exc:  # a bug, not a provider failure: keep the job for a later try
            log.exception("job %d (%s on %s) failed unexpectedly", job.id, job.message.provider_message_id,
                          job.channel_id)
            self._retry_or_give_up(job, f"internal error: {type(exc).__name__}", None)

    def _send_parts(self, channel: Channel, job: Job, reply: str) -> None:
        store, pm, settings = self.runtime.store, self.runtime.pm, self.runtime.settings
        limit = self.runtime.types[channel.type].max_text_length
        texts = split_text(reply, limit) if limit else [reply]
        peer = job.message.sender
        for part in store.parts(job, texts, peer):
            if part.status not in ("pending", "sending"):
                continue  # accepted by the provider before (or failed for good)
            if part.status == "sending":
                log.warning("job %d part %d may have been sent before a crash; sending it again "
                            "(at-least-once)", job.id, part.part_no)
            store.set_part(part.id, "sending")
            try:
                sent = pm.hook.send(channel=channel, message=OutboundMessage(channel.id, peer, part.text),
                                    settings=settings)
            except SendError as exc:
                if exc.permanent:
                    store.set_part(part.id, "failed", error=str(exc))
                    store.skip_unsent(job.id, "an earlier part failed")
                    store.fail(job.id, str(exc))
                    log.error("sending to %s on %s failed for good: %s", peer, channel.id, exc)
                    return
                store.set_part(part.id, "pending", error=str(exc))
                self._retry_or_give_up(job, str(exc), exc.retry_after, part_id=part.id)
                return
            if sent is None:
                raise RuntimeError(f"no plugin implements send for channel type {channel.type!r}")
            store.set_part(part.id, sent.status or "sent", provider_id=sent.provider_message_id)
        store.complete(job.id)
        log.info("replied to %s on %s (job %d)", peer, channel.id, job.id)

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
