"""Agents: what answers a message. Registered through the ``sophon_agents`` hook."""
from __future__ import annotations

from typing import Protocol, Sequence

from .models import InboundMessage, Turn


class Agent(Protocol):
    """An agent has an ``id`` (what ``routing.agentId`` names) and ``reply``.

    ``reply`` gets the message and the session's recent history (oldest first,
    excluding this message) and returns the reply text. It may block; it runs
    in a background thread, bounded by ``SOPHON_AGENT_TIMEOUT``. Raising is
    allowed: the sender then gets a short apology.
    """

    id: str

    def reply(self, message: InboundMessage, history: Sequence[Turn]) -> str: ...
