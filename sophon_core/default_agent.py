"""The built-in ``default`` agent: offline, deterministic, not an LLM.

Registered through the ``sophon`` entry point group like any external plugin.
It echoes the message and the sender's previous one, which makes it a good
smoke test of routing and sessions. Files the sender attached (on channels that
carry files) are described and sent back, a smoke test of media both ways.
"""
from __future__ import annotations

from typing import Sequence

from .hookspecs import hookimpl
from .models import Attachment, InboundMessage, Reply, Turn


class DefaultAgent:
    id = "default"

    def reply(self, message: InboundMessage, history: Sequence[Turn]) -> str | Reply:
        text = message.text.strip()
        files = [f"{a.content_type}, {a.size} bytes" for a in message.attachments]
        dropped = [f"{d.content_type}: {d.reason}" for d in message.dropped_attachments if d.reason]
        if not text and not files:
            return "Sophon default agent. Your message had no text I could read." + _listed(
                " Files not received: ", dropped)
        reply = f'Sophon default agent. You said: "{text}"' if text else "Sophon default agent."
        previous = next((t for t in reversed(history) if t.role == "user"), None)
        if previous is not None and previous.text.strip():
            reply += f' (before that: "{previous.text.strip()}")'
        reply += _listed(" You sent: ", files) + _listed(" Files not received: ", dropped)
        if not message.attachments:
            return reply
        back = tuple(Attachment(a.content_type, path=a.path, filename=a.filename) for a in message.attachments)
        return Reply(reply + " Here they are back.", attachments=back)


def _listed(lead: str, items: list[str]) -> str:
    return lead + "; ".join(items) + "." if items else ""


@hookimpl
def sophon_agents():
    return [DefaultAgent()]
