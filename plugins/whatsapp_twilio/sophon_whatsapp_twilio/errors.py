"""Twilio's WhatsApp failures in words a user can act on."""
from __future__ import annotations

from twilio.base.exceptions import TwilioRestException

from sophon_core.errors import SendError
from sophon_sms_twilio.errors import AUTH_ERROR

OUTSIDE_WINDOW = ("outside WhatsApp's 24-hour customer service window: a free-form reply "
                  "can only be sent within 24 hours of the person's last message. To write first or later, "
                  "send an approved WhatsApp template (Twilio Content API, ContentSid); Sophon does not send "
                  "templates itself")

# Delivery reports (StatusCallback ErrorCode) and REST errors, by Twilio code.
_WORDS = {
    "63016": OUTSIDE_WINDOW,
    "63003": "the recipient is not a valid WhatsApp user",
    "63024": "the recipient is not a valid WhatsApp user",
    "63007": ("the sender is not a WhatsApp sender of this Twilio account: check phoneNumber, "
              "and register the number under Messaging > Senders > WhatsApp senders"),
    "63018": "WhatsApp's rate limit for this sender was exceeded; sending again later",
    "63019": "WhatsApp could not download the file Sophon sent: check that SOPHON_PUBLIC_URL "
             "reaches this server from the internet",
    "63021": "WhatsApp refused the message's content or file type",
    "63032": "the recipient cannot receive this message (user's WhatsApp settings or region)",
    "11751": "the file is larger than WhatsApp allows (16 MB, pictures 5 MB)",
    "21617": "the message is longer than Twilio's 1600-character limit",
    "21623": "more than 10 files in one message",
}
_PERMANENT = {20003, 20404, 21211, 21602, 21617, 21623, 63003, 63007, 63016, 63021, 63024, 63032, 11751}
_TRANSIENT = {20429, 30001, 63018}


def delivery_error(code: str) -> str:
    return "Twilio " + code + ": " + _WORDS.get(code, f"delivery failed (https://www.twilio.com/docs/errors/{code})")


def send_error(exc: TwilioRestException, *, to: str, retry_after: float | None = None) -> SendError:
    """Map a Twilio REST error on Messages create (WhatsApp) to a ``SendError``."""
    code, status = exc.code, exc.status
    if code == 20003 or status == 401:
        text = AUTH_ERROR
    elif code == 21211:
        text = f"{to} is not a valid WhatsApp address (Twilio 21211)."
    elif str(code) in _WORDS:
        words = _WORDS[str(code)]
        text = f"{words[0].upper()}{words[1:]} (Twilio {code})."
    elif status == 429:
        text = "Twilio is rate-limiting this account (HTTP 429); sending again later."
    elif status >= 500:
        text = f"Twilio answered HTTP {status} (error {code}), a temporary failure."
    else:
        text = (f"Twilio refused the message: {exc.msg} (error {code}, "
                f"https://www.twilio.com/docs/errors/{code}).")
    permanent = code in _PERMANENT or (400 <= status < 500 and status not in (408, 429) and code not in _TRANSIENT)
    return SendError(text, code=code, permanent=permanent, retry_after=retry_after)
