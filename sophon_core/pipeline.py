"""From an acknowledged inbound message to the agent's reply on the wire.

``Pipeline.accept`` runs inside the webhook request: it records the message
(once per provider message id) and queues it. Everything slow (the agent, the
provider's REST API) runs on background threads, so the webhook answers fast.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Sequence

from .errors import SendError
from .models import Channel, InboundMessage, OutboundMessage

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime

log = logging.getLogger("sophon.pipeline")

APOLOGY = "Sorry, I couldn't answer that just now. Please try again in a moment."
HISTORY_TURNS = 20


def session_key(channel: Channel, msg: InboundMessage) -> str:
    """``main-session``: one session per agent; ``per-peer``: one per sender and channel."""
    agent = channel.routing.agent_id
    if channel.routing.dm_behavior == "per-peer":
        return f"agent:{agent}:peer:{channel.id}:{msg.sender}"
    return f"agent:{agent}:main"


class Pipeline:
    def __init__(self, runtime: "Runtime", workers: int = 4):
        self.runtime = runtime
        self._jobs = ThreadPoolExecutor(workers, thread_name_prefix="sophon-job")
        self._agents = ThreadPoolExecutor(workers, thread_name_prefix="sophon-agent")
        # Striped locks: messages of one session are handled one at a time, in order,
        # with memory bounded whatever the number of sessions.
        self._locks = tuple(threading.Lock() for _ in range(64))

    def accept(self, messages: Sequence[InboundMessage]) -> list[Future]:
        """Record each message (duplicates by provider id are dropped) and queue it."""
        futures = []
        for msg in messages:
            channel = self.runtime.config.get(msg.channel_id)
            if channel is None:
                log.error("message %s names unknown channel %r; dropped",
                          msg.provider_message_id, msg.channel_id)
                continue
            key = session_key(channel, msg)
            row = self.runtime.store.record_inbound(msg, key)
            if row is None:
                log.info("duplicate delivery of %s on %s ignored", msg.provider_message_id, channel.id)
                continue
            futures.append(self._jobs.submit(self._process, channel, msg, key, row))
        return futures

    def shutdown(self, wait: bool = True) -> None:
        self._jobs.shutdown(wait=wait)
        self._agents.shutdown(wait=False)

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[hash(key) % len(self._locks)]

    def _process(self, channel: Channel, msg: InboundMessage, key: str, row: int) -> None:
        try:
            with self._lock(key):  # one message of a session at a time, in order
                text = msg.canned_reply if msg.canned_reply is not None else self._ask_agent(channel, msg, key, row)
                self.send(channel, OutboundMessage(channel.id, msg.sender, text), key)
        except Exception:  # never let a job kill the worker thread
            log.exception("processing %s on %s failed", msg.provider_message_id, channel.id)

    def _ask_agent(self, channel: Channel, msg: InboundMessage, key: str, row: int) -> str:
        agent = self.runtime.agents.get(channel.routing.agent_id)
        if agent is None:
            log.error("channel %s routes to agent %r, which is not installed; apologizing",
                      channel.id, channel.routing.agent_id)
            return APOLOGY
        history = self.runtime.store.history(key, current_id=row, limit=HISTORY_TURNS)
        future = self._agents.submit(agent.reply, msg, history)
        timeout = self.runtime.settings.agent_timeout
        try:
            reply = future.result(timeout=timeout)
        except FutureTimeout:
            log.error("agent %r took longer than %.0f s (SOPHON_AGENT_TIMEOUT) on %s; apologizing",
                      agent.id, timeout, msg.provider_message_id)
            return APOLOGY
        except Exception as exc:
            log.error("agent %r raised %s on %s; apologizing", agent.id, type(exc).__name__,
                      msg.provider_message_id, exc_info=True)
            return APOLOGY
        if not isinstance(reply, str) or not reply.strip():
            log.error("agent %r returned %s instead of text on %s; apologizing", agent.id,
                      type(reply).__name__ if not isinstance(reply, str) else "empty text",
                      msg.provider_message_id)
            return APOLOGY
        return reply

    def send(self, channel: Channel, out: OutboundMessage, key: str) -> None:
        """Send through the channel's plugin and record the outcome."""
        pm = self.runtime.pm
        try:
            parts = pm.hook.send(channel=channel, message=out, settings=self.runtime.settings)
        except SendError as exc:
            for part in exc.sent_parts:
                self.runtime.store.record_outbound(channel.id, out.recipient, key, part.text,
                                                   part.status, part.provider_message_id)
            self.runtime.store.record_outbound(channel.id, out.recipient, key, out.text, "failed",
                                               error=str(exc))
            log.error("sending to %s on %s failed: %s", out.recipient, channel.id, exc)
            return
        if parts is None:
            raise RuntimeError(f"no plugin implements send for channel type {channel.type!r}")
        for part in parts:
            self.runtime.store.record_outbound(channel.id, out.recipient, key, part.text,
                                               part.status, part.provider_message_id)
        log.info("replied to %s on %s in %d message(s)", out.recipient, channel.id, len(parts))
