"""Domain errors. Each carries a message written for the person who must fix it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with ``channels.json``.

    Rendered as ``<channel id>: <json path>: <what is wrong and how to fix it>``.
    """

    channel_id: str
    path: str
    message: str
    level: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.channel_id}: {where}{self.message}"


class SophonError(Exception):
    """Base class of every error Sophon raises on purpose."""


class ConfigError(SophonError):
    """``channels.json`` is unusable. ``problems`` lists every error at once."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = [p for p in problems if p.level == "error"]
        self.warnings = [p for p in problems if p.level != "error"]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is invalid ({len(self.problems)} problem(s)):\n{lines}")


class WebhookRejected(SophonError):
    """A plugin refuses an inbound webhook; the core answers ``status`` with ``reason``.

    :param reason: goes to the caller: short, no secret, nothing about other channels.
    :param detail: goes only to the server log (e.g. the URL a signature was checked
        against, which channels were tried); never a secret either.
    """

    def __init__(self, status: int, reason: str, detail: str | None = None):
        self.status = status
        self.reason = reason
        self.detail = detail
        super().__init__(f"{status}: {reason}")


class SendError(SophonError):
    """Sending failed. ``permanent`` means retrying the same message cannot help.

    :param message: words a user can act on (no secrets).
    :param code: the provider's error code when there is one (e.g. Twilio 21608).
    :param retry_after: seconds the provider asked us to wait (e.g. HTTP Retry-After).
    :param recipient_opted_out: the provider says the recipient opted out; the core
        records it and sends them nothing more until they opt back in.
    :param ambiguous: the request may have reached the provider (e.g. a read
        timeout): a retry may duplicate the message, and the core logs that it does.
    """

    def __init__(self, message: str, *, code: int | None = None, permanent: bool = False,
                 retry_after: float | None = None, recipient_opted_out: bool = False,
                 ambiguous: bool = False):
        self.code = code
        self.ambiguous = ambiguous
        self.recipient_opted_out = recipient_opted_out
        self.permanent = permanent
        self.retry_after = retry_after
        super().__init__(message)


class AttachmentError(SophonError):
    """An inbound file cannot be fetched or is not allowed (too big, wrong type, wrong
    host). The message is still answered; the agent learns the file was dropped and why."""
