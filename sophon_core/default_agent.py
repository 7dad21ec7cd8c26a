"""The built-in ``default`` agent: offline, deterministic, not an LLM.

Registered through the ``sophon`` entry point group like any external plugin.
It echoes the message and counts the conversation, which makes it a good
smoke test of routing and sessions.
"""
from __future__ import annotations

from typing import Sequence

from .hookspecs import hookimpl
from .models import InboundMessage, Turn


class DefaultAgent:
    id = "default"

    def reply(self, message: InboundMessage, history: Sequence[Turn]) -> str:
        n = 1 + sum(1 for t in history if t.role == "user")
        text = message.text.strip()
        if not text:
            return "Sophon here. Your message had no text I could read."
        return f'Sophon default agent (message {n} in this session). You said: "{text}"'


@hookimpl
def sophon_agents():
    return [DefaultAgent()]
