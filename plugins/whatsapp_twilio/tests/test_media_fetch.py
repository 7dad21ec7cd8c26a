"""Fetching the files people send: Twilio's hosts only, credentials only to Twilio,
bounded size and type. Real HTTP on loopback: the sandbox plays api.twilio.com and
its media CDN; a second server plays "somewhere else"."""
from __future__ import annotations

import pytest

from sophon_core.errors import AttachmentError
from sophon_core.models import Attachment, Channel
from sophon_whatsapp_twilio import media

PNG = b"\x89PNG\r\n\x1a\n" + b"p" * 5000


def channel(account, token=None):
    return Channel("wa", "whatsapp", "wa", True, {"accountSid": account.sid,
                                                 "authToken": token or account.auth_token,
                                                 "phoneNumber": "+15005550020"})


def env(sandbox):
    return {"SOPHON_TWILIO_API_URL": sandbox.url}


def test_fetches_with_credentials_then_follows_the_cdn_redirect_without_them(sandbox, account):
    url = sandbox.add_media(account.sid, "MM" + "a" * 32, PNG, "image/png")
    assert media.fetch(channel(account), Attachment("image/png", url=url), env(sandbox)) == PNG
    gets = [r for r in sandbox.requests() if r["method"] == "GET"]
    assert [bool(r["auth_user"]) for r in gets] == [True, False]  # the API hop has auth, the CDN hop none
    assert "/_media/" in gets[1]["path"]


def test_a_url_on_another_host_is_never_requested(sandbox, account, foreign):
    url = f"{foreign.url}/2010-04-01/Accounts/{account.sid}/Messages/MM1/Media/ME1"
    with pytest.raises(AttachmentError, match="is not a Twilio media host"):
        media.fetch(channel(account), Attachment("image/png", url=url), env(sandbox))
    assert foreign.requests == []


def test_a_redirect_to_another_host_is_refused_before_it_is_followed(sandbox, account, foreign):
    url = sandbox.add_media(account.sid, "MM" + "b" * 32, PNG, "image/png", redirect_to=foreign.url + "/x.png")
    with pytest.raises(AttachmentError, match="redirected to .* not a Twilio media host") as err:
        media.fetch(channel(account), Attachment("image/png", url=url), env(sandbox))
    assert foreign.requests == []
    assert account.auth_token not in str(err.value)


def test_only_this_accounts_media_is_fetched(sandbox, account):
    other = sandbox.add_account()
    url = sandbox.add_media(other.sid, "MM" + "c" * 32, PNG, "image/png")
    with pytest.raises(AttachmentError, match="not under this channel's Twilio account"):
        media.fetch(channel(account), Attachment("image/png", url=url), env(sandbox))
    assert [r for r in sandbox.requests() if r["method"] == "GET"] == []


def test_a_lying_content_type_is_refused(sandbox, account):
    url = sandbox.add_media(account.sid, "MM" + "d" * 32, b"<script>", "image/png", served_type="text/html")
    with pytest.raises(AttachmentError, match="declared image/png but served as text/html"):
        media.fetch(channel(account), Attachment("image/png", url=url), env(sandbox))


def test_types_whatsapp_does_not_carry_are_not_fetched(sandbox, account):
    url = sandbox.add_media(account.sid, "MM" + "e" * 32, b"MZ", "application/x-msdownload")
    for ctype in ("application/x-msdownload", "image/svg+xml", "text/html"):
        with pytest.raises(AttachmentError, match="are not accepted"):
            media.fetch(channel(account), Attachment(ctype, url=url), env(sandbox))
    assert [r for r in sandbox.requests() if r["method"] == "GET"] == []


def test_files_over_25_mb_are_cut_off(sandbox, account, monkeypatch):
    monkeypatch.setattr(media, "MAX_BYTES", 4096)  # same code path, smaller file
    url = sandbox.add_media(account.sid, "MM" + "f" * 32, PNG, "image/png")
    with pytest.raises(AttachmentError, match="larger than"):
        media.fetch(channel(account), Attachment("image/png", url=url), env(sandbox))
    assert media.MAX_FILES == 10


def test_a_wrong_token_is_reported_without_the_token(sandbox, account):
    url = sandbox.add_media(account.sid, "MM" + "9" * 32, PNG, "image/png")
    with pytest.raises(AttachmentError, match="check the channel's Auth Token") as err:
        media.fetch(channel(account, token="wrong-token-value"), Attachment("image/png", url=url), env(sandbox))
    assert "wrong-token-value" not in str(err.value)


def test_real_twilio_hosts_are_https_twilio_and_its_cdn_only():
    real = {}
    assert media._on_twilio("https://api.twilio.com/2010-04-01/Accounts/AC1/Media/ME1", real, cdn=False)
    assert not media._on_twilio("http://api.twilio.com/x", real, cdn=False)  # not https
    assert not media._on_twilio("https://api.twilio.com:8443/x", real, cdn=False)
    assert not media._on_twilio("https://mms.twiliocdn.com/x", real, cdn=False)  # the CDN: redirects only
    assert media._on_twilio("https://mms.twiliocdn.com/x", real, cdn=True)
    assert not media._on_twilio("https://api.twilio.com.evil.test/x", real, cdn=True)
    assert not media._on_twilio("https://evil-twilio.com/x", real, cdn=True)
    assert not media._on_twilio("https://169.254.169.254/latest/meta-data", real, cdn=True)
