"""Twilio's failures in the words of the SMS product page's troubleshooting list."""
from __future__ import annotations

from twilio.base.exceptions import TwilioRestException

from sophon_core.errors import SendError

AUTH_ERROR = ("Authentication error: the Account SID or Auth Token is wrong. "
              "Copy them from the Twilio Console dashboard.")
QUEUE_OVERFLOW = ("Queue overflow: Twilio rate-limits each phone number. For high volume, "
                  "consider upgrading to a Twilio short code or toll-free number.")
TRIAL_ONLY_VERIFIED = ("Trial account limitation: trial accounts can only send SMS to verified "
                       "numbers. Add recipients under Phone Numbers > Verified Caller IDs, or "
                       "upgrade your account.")

# Codes after which retrying the same message cannot succeed.
_PERMANENT = {20003, 20404, 21211, 21212, 21602, 21603, 21604, 21606, 21608, 21610, 21614, 21617}
# Twilio's "try later" codes: rate limits and full queues.
_TRANSIENT = {20429, 30001, 21611}


def send_error(exc: TwilioRestException, *, to: str, from_: str,
               retry_after: float | None = None) -> SendError:
    """Map a Twilio REST error on Messages create to a ``SendError`` a user can act on."""
    code, status = exc.code, exc.status
    if code == 20003 or status == 401:
        text = AUTH_ERROR
    elif code == 21608:
        text = f"{to} is not verified. {TRIAL_ONLY_VERIFIED}"
    elif code == 21610:
        text = (f"{to} replied STOP to {from_}: Twilio will not deliver to this recipient "
                "until they text START (Twilio 21610).")
    elif code == 21211:
        text = f"{to} is not a valid phone number (Twilio 21211)."
    elif code == 21614:
        text = f"{to} is not a mobile number and cannot receive SMS (Twilio 21614)."
    elif code in (21606, 21212):
        text = (f"{from_} is not an SMS-capable number of this Twilio account (Twilio {code}): "
                "check phoneNumber in channels.json.")
    elif code in _TRANSIENT or status == 429:
        text = QUEUE_OVERFLOW
    elif status >= 500:
        text = f"Twilio answered HTTP {status} (error {code}), a temporary failure."
    else:
        text = (f"Twilio refused the message: {exc.msg} (error {code}, "
                f"https://www.twilio.com/docs/errors/{code}).")
    permanent = code in _PERMANENT or (400 <= status < 500 and status not in (408, 429) and code not in _TRANSIENT)
    return SendError(text, code=code, permanent=permanent, retry_after=retry_after,
                     recipient_opted_out=code == 21610)
