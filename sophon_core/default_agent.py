"""The built-in ``default`` agent: offline, deterministic, not an LLM.

Registered through the ``sophon`` entry point group like any external plugin.
It echoes the message and the sender's previous one, which makes it a good
smoke test of routing and sessions.
"""
from __future__ import annotations

from typing import Sequence

from .hookspecs import hookimpl
from .models import InboundMessage, Turn


class DefaultAgent:
    id = "default"

    def reply(self, message: InboundMessage, history: Sequence[Turn]) -> str:
        text = message.text.strip()
        if not text:
            return "Sophon default agent. Your message had no text I could read."
        reply = f'Sophon default agent. You said: "{text}"'
        previous = next((t for t in reversed(history) if t.role == "user"), None)
        if previous is not None:
            reply += f' (before that: "{previous.text.strip()}")'
        return reply


@hookimpl
def sophon_agents():
    return [DefaultAgent()]
