"""test_connection against the sandbox: results a user can act on."""
from __future__ import annotations


import pytest

from sophon_core.testing import free_port
from sophon_sms_twilio.errors import AUTH_ERROR

from sms_helpers import NUMBER, PUBLIC, WEBHOOK, sms_channel


def check(rt, channel_id="sms-twilio"):
    return rt.pm.hook.test_connection(channel=rt.config.get(channel_id), settings=rt.settings)


def errors(result):
    return [m for level, m in result.checks if level == "error"]


def test_connected_when_credentials_number_and_webhook_are_right(sms_runtime, account):
    result = check(sms_runtime([sms_channel(account)]))
    assert result.ok and result.status == "connected", result.checks
    assert ("ok", f"incoming messages are sent to {PUBLIC}{WEBHOOK}") in result.checks


def test_wrong_token_gives_the_product_pages_words(sms_runtime, account):
    ch = sms_channel(account)
    ch["config"]["authToken"] = "f" * 32
    result = check(sms_runtime([ch]))
    assert not result.ok
    assert errors(result) == [AUTH_ERROR]
    assert result.status == f"error: {AUTH_ERROR}"
    assert "f" * 32 not in repr(result)


def test_number_not_on_the_account(sms_runtime, account):
    result = check(sms_runtime([sms_channel(account, number="+15005550001")]))
    assert errors(result) == [f"+15005550001 is not a phone number of account {account.sid}. Buy one with "
                              "SMS capability under Phone Numbers > Manage > Buy a Number, or fix phoneNumber"]


def test_number_without_sms(sms_runtime, sandbox, account):
    sandbox.add_number(account.sid, "+15005550002", sms=False, sms_url=PUBLIC + WEBHOOK)
    result = check(sms_runtime([sms_channel(account, number="+15005550002")]))
    assert errors(result) == ["+15005550002 has no SMS capability; pick a number with SMS capability"]


def test_trial_account_is_a_warning(sms_runtime, sandbox):
    trial = sandbox.add_account(type="Trial")
    sandbox.add_number(trial.sid, NUMBER, sms_url=PUBLIC + WEBHOOK)
    result = check(sms_runtime([sms_channel(trial)]))
    assert result.ok
    assert any(level == "warning" and "only send SMS to verified numbers" in m for level, m in result.checks)


def test_webhook_pointing_elsewhere_names_both_urls(sms_runtime, sandbox):
    acct = sandbox.add_account()
    sandbox.add_number(acct.sid, NUMBER, sms_url="https://old.example.com/sms")
    (err,) = errors(check(sms_runtime([sms_channel(acct)])))
    assert "https://old.example.com/sms" in err and f"{PUBLIC}{WEBHOOK}" in err


def test_unreachable_api_is_reported_not_raised(sms_runtime, account):
    rt = sms_runtime([sms_channel(account)], SOPHON_TWILIO_API_URL=f"http://127.0.0.1:{free_port()}")
    (err,) = errors(check(rt))
    assert err.startswith("Cannot reach Twilio at http://127.0.0.1:")


def test_phone_number_example_from_the_issue(sms_runtime, account):
    from sophon_core.errors import ConfigError

    ch = sms_channel(account, number="+1 234")
    with pytest.raises(ConfigError) as info:
        sms_runtime([ch])
    assert [str(p) for p in info.value.problems] == [
        "sms-twilio: config.phoneNumber: '+1 234' is not E.164 (example: +1234567890)"]
