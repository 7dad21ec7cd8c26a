"""``test_connection`` for WhatsApp: credentials, the account, the sender."""
from __future__ import annotations

from sophon_core.models import Channel, ConnectionResult
from sophon_core.settings import Settings
from sophon_sms_twilio.connection import check_account

from .webhook import STATUS_PATH, WEBHOOK_PATH, public_base

TWILIO_WHATSAPP_SANDBOX = "+14155238886"  # Twilio's shared WhatsApp Sandbox sender


def check(channel: Channel, settings: Settings) -> ConnectionResult:
    sid, number = channel.config["accountSid"], channel.config["phoneNumber"]
    failed, checks, found = check_account(channel, settings)
    if failed is not None:
        return failed
    if found:
        checks.append(("ok", f"{number} is a number of this account"))
    elif number == TWILIO_WHATSAPP_SANDBOX:
        checks.append(("warning", f"{number} is Twilio's shared WhatsApp Sandbox: only people who joined "
                       "it (the 'join <code>' message) can talk to the channel"))
    else:
        return ConnectionResult(False, tuple(checks + [("error", f"{number} is not a number of account {sid}. "
                                "Use the account's WhatsApp sender (Messaging > Senders > WhatsApp senders), "
                                "or fix phoneNumber")]))

    base = public_base(channel, settings)
    if base is None:
        checks.append(("warning", "SOPHON_PUBLIC_URL (or publicUrl) is not set: Twilio cannot fetch the files "
                       "the agent sends, and delivery reports are not requested"))
    else:
        checks.append(("ok", f"set the sender's webhook 'When a message comes in' to {base}{WEBHOOK_PATH} and "
                       f"its status callback to {base}{STATUS_PATH} (HTTP POST) in the Twilio Console"))
    checks.append(("ok", "replies are free-form only within 24 hours of the person's last message; outside "
                   "that window WhatsApp needs an approved template (Twilio error 63016)"))
    return ConnectionResult(True, tuple(checks))
