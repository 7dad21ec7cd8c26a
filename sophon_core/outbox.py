"""Messages an operator sends (``sophon send --channel ID --to NUMBER TEXT``).

Same rules as the agent's replies: the channel must be active, the recipient
must not have opted out, the day's unit budget and the address's send rate
(shared with running servers through the store) apply, long text is split,
and each part is recorded before the provider call and gets its id after it
(delivery reports then update it). Temporary provider failures are retried
with backoff for up to ``retry_for`` seconds; the call then reports the outcome.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pluggy

from .errors import SendError, SophonError
from .models import Channel, ChannelType, OutboundMessage
from .pipeline import backoff, pace, session_for
from .settings import Settings
from .store import Store
from .textsplit import split_text


class NotSent(SophonError):
    """Nothing (more) was sent; the message says why and what to do."""

    def __init__(self, message: str, sent: list[dict]):
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True)
class Outbox:
    settings: Settings
    pm: pluggy.PluginManager
    types: dict[str, ChannelType]
    store: Store

    def send(self, channel: Channel, to: str, text: str, *, retry_for: float = 30.0,
             on_retry: Callable[[str, float], None] | None = None) -> list[dict]:
        """Send ``text`` to ``to``. :return: one ``{part, id, status, units}`` per part.

        :raises NotSent: the channel is inactive, the recipient opted out, the budget is
            spent, or the provider refused (for good, or for longer than ``retry_for``).
        """
        if not channel.enabled:
            raise NotSent(f"channel {channel.id!r} is not active; activate it first "
                          f"(sophon channels activate {channel.id})", [])
        if not text.strip():
            raise NotSent("the text is empty", [])
        ctype = self.types[channel.type]
        texts = split_text(text, ctype.max_text_length) if ctype.max_text_length else [text]
        session = session_for(channel, to)
        sent: list[dict] = []
        for n, part_text in enumerate(texts):
            units = ctype.units(part_text)
            pace(self.store, channel, ctype, units)
            verdict, part = self.store.begin_direct(channel.id, to, session, part_text, units,
                                                    channel.limits.daily_outbound_units)
            if verdict == "opted_out":
                raise NotSent(f"{to} opted out of {channel.id} (texted STOP); nothing is sent to them until "
                              "they text START", sent)
            if verdict == "over_budget":
                raise NotSent(f"channel {channel.id} reached its daily budget of "
                              f"{channel.limits.daily_outbound_units} units (limits.dailyOutboundUnits)", sent)
            assert part is not None
            result = self._attempt(channel, to, part_text, units, part, retry_for, on_retry, sent)
            self.store.part_sent(None, part, result.provider_message_id, result.status or "sent")  # type: ignore[arg-type]
            sent.append({"part": n + 1, "id": result.provider_message_id, "status": result.status, "units": units})
        return sent

    def _attempt(self, channel, to, text, units, part, retry_for, on_retry, sent):
        first_failure = None
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self.pm.hook.send(channel=channel, message=OutboundMessage(channel.id, to, text),
                                           settings=self.settings)
                if result is None:
                    raise SendError(f"no plugin implements send for channel type {channel.type!r}", permanent=True)
                return result
            except SendError as exc:
                if exc.recipient_opted_out:
                    self.store.set_opt_out(channel.id, to, "STOP (reported by the provider)")
                now = time.time()
                first_failure = first_failure or now
                delay = backoff(attempt, self.settings.retry_base, exc.retry_after)
                if exc.permanent or now + delay > first_failure + retry_for:
                    self.store.direct_unsent(channel.id, part, units, str(exc))
                    raise NotSent(str(exc), sent) from None
                if on_retry:
                    on_retry(str(exc), delay)
                time.sleep(delay)
