"""From an acknowledged inbound message to the agent's reply on the wire.

``Pipeline.accept`` runs inside the webhook request: it records the message
(once per provider message id) and queues it. Everything slow (the agent, the
provider's REST API) runs on background threads, so the webhook answers fast.

Each session has a FIFO queue drained by one runner at a time, so a session's
messages are answered one after another in arrival order, and a slow session
never holds a thread that another session could use.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
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
    def __init__(self, runtime: "Runtime", threads: int = 16):
        self.runtime = runtime
        self._runners = ThreadPoolExecutor(threads, thread_name_prefix="sophon-session")
        self._queues: dict[str, deque] = {}
        self._guard = threading.Lock()
        self.abandoned_agent_calls = 0  # agent calls still running after their timeout

    def accept(self, channel_type: str, messages: Sequence[InboundMessage]) -> int:
        """Record each message (duplicates by provider id are dropped) and queue it.

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
            key = session_key(channel, msg)
            row = self.runtime.store.record_inbound(msg, key)
            if row is None:
                log.info("duplicate delivery of %s on %s ignored", msg.provider_message_id, channel.id)
                continue
            self._enqueue(key, (channel, msg, row))
            queued += 1
        return queued

    def shutdown(self, wait: bool = True) -> None:
        self._runners.shutdown(wait=wait)

    def _enqueue(self, key: str, job: tuple) -> None:
        with self._guard:
            queue = self._queues.get(key)
            if queue is not None:  # a runner is draining this session: it will get there
                queue.append(job)
                return
            self._queues[key] = deque([job])
        self._runners.submit(self._drain, key)

    def _drain(self, key: str) -> None:
        while True:
            with self._guard:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                channel, msg, row = queue.popleft()
            try:
                self._process(channel, msg, key, row)
            except Exception:  # never let one message stop the session's queue
                log.exception("processing %s on %s failed", msg.provider_message_id, channel.id)

    def _process(self, channel: Channel, msg: InboundMessage, key: str, row: int) -> None:
        text = msg.canned_reply if msg.canned_reply is not None else self._ask_agent(channel, msg, key, row)
        self.send(channel, OutboundMessage(channel.id, msg.sender, text), key, reply_to=row)

    def _ask_agent(self, channel: Channel, msg: InboundMessage, key: str, row: int) -> str:
        agent = self.runtime.agents.get(channel.routing.agent_id)
        if agent is None:
            log.error("channel %s routes to agent %r, which is not installed; apologizing",
                      channel.id, channel.routing.agent_id)
            return APOLOGY
        history = self.runtime.store.history(key, current_id=row, limit=HISTORY_TURNS)
        timeout = self.runtime.settings.agent_timeout
        outcome: dict = {}
        done = threading.Event()

        def call() -> None:
            try:
                outcome["reply"] = agent.reply(msg, history)
            except BaseException as exc:  # reported below, in the session's thread
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

    def send(self, channel: Channel, out: OutboundMessage, key: str, reply_to: int | None = None) -> None:
        """Send through the channel's plugin and record the outcome."""
        store = self.runtime.store
        try:
            parts = self.runtime.pm.hook.send(channel=channel, message=out, settings=self.runtime.settings)
        except SendError as exc:
            for part in exc.sent_parts:
                store.record_outbound(channel.id, out.recipient, key, part.text, part.status,
                                      part.provider_message_id, reply_to=reply_to)
            store.record_outbound(channel.id, out.recipient, key, out.text, "failed", error=str(exc),
                                  reply_to=reply_to)
            log.error("sending to %s on %s failed: %s", out.recipient, channel.id, exc)
            return
        if parts is None:
            raise RuntimeError(f"no plugin implements send for channel type {channel.type!r}")
        for part in parts:
            store.record_outbound(channel.id, out.recipient, key, part.text, part.status,
                                  part.provider_message_id, reply_to=reply_to)
        log.info("replied to %s on %s in %d message(s)", out.recipient, channel.id, len(parts))
