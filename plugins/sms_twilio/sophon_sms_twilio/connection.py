"""``test_connection`` for SMS: credentials, the number, its webhook."""
from __future__ import annotations

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException

from sophon_core.models import Channel, ConnectionResult
from sophon_core.settings import Settings

from .client import api_base, client_for
from .errors import AUTH_ERROR, TRIAL_ONLY_VERIFIED

WEBHOOK_PATH = "/api/channels/sms/webhook"


def expected_webhook(channel: Channel, settings: Settings) -> str | None:
    base = (channel.config.get("publicUrl") or settings.public_url or "").rstrip("/")
    return base + WEBHOOK_PATH if base else None


def check_account(channel: Channel, settings: Settings,
                  trial_warning: str | None = None) -> tuple[ConnectionResult | None, list, list]:
    """Fetch the channel's Twilio account and look its ``phoneNumber`` up (shared by every
    Twilio channel type). ``trial_warning``: added when the account is a trial account.

    :return: (a failed result, or None when the account is active; the checks so far;
        the account's numbers matching ``phoneNumber``).
    """
    cfg = channel.config
    sid, number = cfg["accountSid"], cfg["phoneNumber"]
    client = client_for(cfg, settings.env)
    checks: list[tuple[str, str]] = []

    def fail(message: str) -> tuple[ConnectionResult, list, list]:
        return ConnectionResult(False, tuple(checks + [("error", message)])), checks, []

    try:
        account = client.api.v2010.accounts(sid).fetch()
        found = client.api.v2010.accounts(sid).incoming_phone_numbers.list(phone_number=number, limit=20)
    except TwilioRestException as exc:
        if exc.status == 401 or exc.code == 20003:
            return fail(AUTH_ERROR)
        return fail(f"Twilio answered HTTP {exc.status}: {exc.msg} (error {exc.code})")
    except (requests.RequestException, TwilioException, OSError) as exc:
        return fail(f"Cannot reach Twilio at {api_base(settings.env)} ({type(exc).__name__}); "
                    "check the network or SOPHON_TWILIO_API_URL")
    if account.status != "active":
        return fail(f"Twilio account {sid} is {account.status}; reactivate it in the Twilio Console")
    checks.append(("ok", f"Twilio account {sid} is active ({account.type})"))
    if account.type == "Trial" and trial_warning:
        checks.append(("warning", trial_warning))
    return None, checks, [n for n in found if n.phone_number == number]


def check(channel: Channel, settings: Settings) -> ConnectionResult:
    sid, number = channel.config["accountSid"], channel.config["phoneNumber"]
    failed, checks, found = check_account(channel, settings, TRIAL_ONLY_VERIFIED)
    if failed is not None:
        return failed

    def fail(message: str) -> ConnectionResult:
        return ConnectionResult(False, tuple(checks + [("error", message)]))

    match = next(iter(found), None)
    if match is None:
        return fail(f"{number} is not a phone number of account {sid}. Buy one with SMS capability "
                    "under Phone Numbers > Manage > Buy a Number, or fix phoneNumber")
    if not (match.capabilities or {}).get("sms"):
        return fail(f"{number} has no SMS capability; pick a number with SMS capability")
    checks.append(("ok", f"{number} is on the account and can send and receive SMS"))

    wanted = expected_webhook(channel, settings)
    current = match.sms_url or "(not set)"
    if wanted is None:
        checks.append(("warning", f"Twilio sends this number's messages to {current}; set "
                       f"SOPHON_PUBLIC_URL so Sophon can check it is <public URL>{WEBHOOK_PATH}"))
    elif match.sms_url != wanted or (match.sms_method or "POST").upper() != "POST":
        return fail(f"The number's 'A message comes in' webhook is {current} "
                    f"({match.sms_method or 'POST'}); it must be {wanted} with HTTP POST. Set it under "
                    f"Phone Numbers > Manage > Active Numbers > {number} > Messaging")
    else:
        checks.append(("ok", f"incoming messages are sent to {wanted}"))
    return ConnectionResult(True, tuple(checks))
